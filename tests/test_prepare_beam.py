"""`gptjax prepare --runner beam` on Beam's DirectRunner (2 worker processes): the same output as the local runner,
byte for byte, on a planted corpus with exact and near copies; resume; connected components; bad options."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import GCS_BUCKET, dir_snapshot, run_cli
from test_data_dedup import fixture_bases

from gptjax.errors import GptjaxError
from gptjax.prepare import dedup
from gptjax.prepare.dedup import MinHashConfig, UnionFind
from gptjax.prepare.pipeline import FAULT_KILL_AFTER_PARTS
from gptjax.testing import planted

pytest.importorskip("apache_beam")
from gptjax.prepare.pipeline import beam as beam_runner  # noqa: E402

BEAM_OPTIONS = ["--runner", "beam", "--", "--runner=DirectRunner", "--direct_running_mode=multi_processing",
                "--direct_num_workers=2"]
SETTINGS = ["--chunk-mb", "0.02", "--boilerplate", "line", "--tokenizer", "sentencepiece", "--vocab-size", "600",
            "--shard-tokens", "20000", "--quiet"]
STAGE_COUNTS = ("docs_in", "docs_out", "bytes_in", "bytes_out", "tokens_out", "dropped", "examples")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    """A planted corpus (exact and near copies, hard negatives) over three files of two formats; the second file
    repeats five documents of the first, so exact copies cross files."""
    texts = planted.plant_corpus(fixture_bases(), copies_per_kind=8, negatives_per_kind=8, seed=5).texts
    folder = tmp_path_factory.mktemp("beam_corpus")
    third = len(texts) // 3
    (folder / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:third]))
    (folder / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[third:2 * third] + texts[:5]))
    (folder / "c.txt").write_text("\n\n".join(texts[2 * third:]))
    return folder


def prepare(corpus: Path, out: Path, *extra: str, env: dict | None = None):
    return run_cli(["prepare", "--input", str(corpus), "--out", str(out), "--decisions", f"{out}.decisions.jsonl",
                    *SETTINGS, *extra], env_extra=env)


@pytest.fixture(scope="module")
def local_out(corpus_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    proc = prepare(corpus_dir, out, "--workers", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def assert_same_output(local: Path, beam: Path) -> None:
    """Every file byte-identical but the timings: the manifest apart from `seconds`, the report's stage counts."""
    local_files, beam_files = dir_snapshot(local), dir_snapshot(beam)
    assert sorted(local_files) == sorted(beam_files)
    differing = {name for name in local_files if local_files[name] != beam_files[name]}
    assert differing <= {"manifest.json", "report.json"}, differing
    local_manifest, beam_manifest = (json.loads((d / "manifest.json").read_text()) for d in (local, beam))
    local_manifest.pop("seconds")
    beam_manifest.pop("seconds")
    assert local_manifest == beam_manifest
    local_report, beam_report = (json.loads((d / "report.json").read_text()) for d in (local, beam))
    assert local_report["stages"].keys() == beam_report["stages"].keys()
    for stage, counts in local_report["stages"].items():
        assert {k: counts[k] for k in STAGE_COUNTS} == {k: beam_report["stages"][stage][k] for k in STAGE_COUNTS}
    assert (beam_report["runner"], local_report["runner"]) == ("beam", "local")
    assert Path(f"{local}.decisions.jsonl").read_bytes() == Path(f"{beam}.decisions.jsonl").read_bytes()


def test_beam_runner_output_equals_the_local_runner(corpus_dir, local_out, tmp_path):
    beam_out = tmp_path / "beam"
    proc = prepare(corpus_dir, beam_out, *BEAM_OPTIONS)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same_output(local_out, beam_out)
    stages = json.loads((beam_out / "report.json").read_text())["stages"]
    assert stages["dedup_exact"]["dropped"]["exact_duplicate"] >= 5  # the five cross-file copies at least
    assert stages["dedup_near"]["dropped"]["near_duplicate"] > 0
    assert stages["dedup_near"]["notes"]["verified_pairs"] > 0
    assert not list(tmp_path.glob(".beam.work")), "the work directory is removed once the output is in place"


def test_beam_run_killed_midway_resumes_to_the_same_output(corpus_dir, local_out, tmp_path):
    beam_out = tmp_path / "beam"
    killed = prepare(corpus_dir, beam_out, *BEAM_OPTIONS, env={FAULT_KILL_AFTER_PARTS: "1"})
    assert killed.returncode != 0 and not beam_out.exists()
    resumed = prepare(corpus_dir, beam_out, *BEAM_OPTIONS)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads((beam_out / "report.json").read_text())
    assert report["resume"]["token_parts"]["computed"] == 0, "the finished parts were reused"
    assert_same_output(local_out, beam_out)


def test_a_run_started_by_one_runner_is_started_over_by_the_other(corpus_dir, tmp_path):
    """The runners cut the corpus into different chunks, so the runner is part of the work directory's settings: a
    local run killed midway leaves a work directory the Beam runner does not reuse."""
    from gptjax.prepare.pipeline import run as pipeline_run

    out = tmp_path / "out"
    killed = prepare(corpus_dir, out, "--workers", "1", env={FAULT_KILL_AFTER_PARTS: "2"})
    assert killed.returncode != 0 and not out.exists()
    work = pipeline_run.work_dir_for(out)
    started = json.loads((work / "settings.json").read_text())
    assert started["runner"] == "local" and any((work / "parts").iterdir())
    pipeline_run._open_work_dir(work, {**started, "runner": "beam"}, show_progress=False)
    assert not any((work / "parts").iterdir()) and not any((work / "clean").iterdir())
    assert json.loads((work / "settings.json").read_text())["runner"] == "beam"


def test_local_near_dedup_is_the_components_of_the_verified_candidate_pairs():
    """Any runner that verifies `group_candidate_pairs` of every band group finds the local runner's clusters."""
    corpus = planted.plant_corpus(fixture_bases(), copies_per_kind=8, negatives_per_kind=8, seed=5)
    config = MinHashConfig()
    shingles, signatures = zip(*(dedup.text_signature(text, config) for text in corpus.texts))
    roots, _ = dedup.cluster_signatures(list(signatures), list(shingles), config)
    signatures_NP = np.stack(signatures)
    alive = ~(signatures_NP == dedup.MINHASH_PRIME).all(axis=1)
    components = UnionFind(len(corpus.texts))
    for column in dedup.band_hashes(signatures_NP, config.bands, config.rows).T:
        for group in dedup.candidate_groups(column, alive):
            for first, second in dedup.group_candidate_pairs(group):
                if dedup.jaccard(shingles[first], shingles[second]) >= config.threshold:
                    components.union(first, second)
    assert np.array_equal(roots, components.roots())
    assert (roots != np.arange(len(roots))).sum() > 10


def test_star_rounds_link_every_node_to_its_component_minimum(tmp_path):
    nodes = list(range(100, 140))
    random.Random(0).shuffle(nodes)
    edges = [(max(pair), min(pair)) for pair in zip(nodes[:-1], nodes[1:])] + [(7, 5), (9, 7)]
    (tmp_path / "edges").mkdir()
    (tmp_path / "edges" / "part-0.jsonl").write_text("".join(json.dumps(edge) + "\n" for edge in edges))
    options = beam_runner.pipeline_options([], workers=2)
    runs = beam_runner.converge_stars(options, tmp_path / "edges", tmp_path / "logs")
    stars = sorted(map(tuple, beam_runner._read(tmp_path / "edges")))
    assert stars == sorted([(node, 100) for node in nodes if node != 100] + [(7, 5), (9, 5)])
    assert runs >= 2, "a round that changes nothing ends the loop"


@pytest.mark.parametrize("options, message", [
    (["--runner=NoSuchRunner"], "Beam runner NoSuchRunner is not available"),
    (["--direct_num_workers=two"], "Beam rejected the pipeline options"),
    (["--no_such_option=1"], "does not know the pipeline option(s) --no_such_option"),
])
def test_pipeline_options_beam_rejects_are_one_error(options, message):
    with pytest.raises(GptjaxError, match=message.replace("(", r"\(").replace(")", r"\)")):
        beam_runner.pipeline_options(options, workers=2)


def test_cli_refuses_bad_beam_options_in_one_line_and_writes_nothing(corpus_dir, tmp_path):
    proc = prepare(corpus_dir, tmp_path / "out", "--runner", "beam", "--", "--runner=NoSuchRunner")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "NoSuchRunner" in proc.stderr, proc.stderr
    stray = prepare(corpus_dir, tmp_path / "out", "--", "--runner=DirectRunner")
    assert stray.returncode == 2 and "need --runner beam" in stray.stderr
    assert not any(tmp_path.iterdir())


# ---- output on gs:// (any runner): staged locally, uploaded with the manifest last ---------------------------------


def test_prepare_to_gs_uploads_the_output_with_the_manifest_last(gcs, cache_dir, corpus_dir, local_out, monkeypatch):
    from gptjax.cli import build_parser
    from gptjax.cli import prepare as prepare_cli
    from gptjax.prepare.pipeline import run as pipeline_run

    url = f"gs://{GCS_BUCKET}/prepared/planted"
    data = prepare_cli.config_from_args(build_parser("prepare").parse_args(
        ["prepare", "--input", str(corpus_dir), "--out", url, *SETTINGS, "--workers", "1"]))
    uploaded: list[str] = []
    real_copy = pipeline_run.shutil.copyfileobj

    def copy_then_fail(source, destination, length):
        real_copy(source, destination, length)
        uploaded.append(destination)
        if len(uploaded) == 3:
            raise OSError("network down")

    monkeypatch.setattr(pipeline_run.shutil, "copyfileobj", copy_then_fail)
    with pytest.raises(OSError, match="network down"):
        pipeline_run.run_pipeline([str(corpus_dir)], url, data, show_progress=False)
    gcs.invalidate_cache()
    assert not gcs.exists(f"{url}/manifest.json"), "an interrupted upload leaves no manifest: not prepared data"
    monkeypatch.setattr(pipeline_run.shutil, "copyfileobj", real_copy)
    manifest = pipeline_run.run_pipeline([str(corpus_dir)], url, data, show_progress=False)
    gcs.invalidate_cache()
    for path in sorted(local_out.rglob("*")):
        if path.is_file() and path.name not in ("manifest.json", "report.json"):
            assert gcs.cat_file(f"{url}/{path.relative_to(local_out)}") == path.read_bytes(), path.name
    assert json.loads(gcs.cat_file(f"{url}/manifest.json")) == manifest
    assert not list((cache_dir / "prepare").glob("*")), "the local staging copy is removed once uploaded"
    with pytest.raises(GptjaxError, match="already holds prepared data"):
        pipeline_run.run_pipeline([str(corpus_dir)], url, data, show_progress=False)
    unreachable = prepare(corpus_dir, "gs://no-such-bucket/prepared")
    assert unreachable.returncode == 2 and "does not exist" in unreachable.stderr, unreachable.stderr
    assert unreachable.stderr.strip().count("\n") == 0
