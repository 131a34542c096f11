"""Hugging Face Hub ids, offline through huggingface_hub's own cache (the code path an online run takes after its
first download): `gptjax import --src ORG/NAME[@REVISION]` and the one-line errors for what the Hub cannot give."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from test_interop_hf import char_tokenizer, gptjax_model, random_params

import gptjax
from gptjax.config import Config
from gptjax.interop import hf

pytest.importorskip("huggingface_hub")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cached_repo(cache: Path, repo_id: str, files: Path, commit: str = COMMIT, branch: str = "main",
                repo_type: str = "model") -> Path:
    """Lays `files` out as huggingface_hub caches a downloaded revision: blobs, a snapshot of links, a ref."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (repo / "refs" / branch).parent.mkdir(parents=True, exist_ok=True)
    (repo / "refs" / branch).write_text(commit)
    snapshot = repo / "snapshots" / commit
    for path in sorted(files.rglob("*")):
        if path.is_file():
            blob = repo / "blobs" / f"{abs(hash(path.read_bytes())):x}"
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, blob)
            link = snapshot / path.relative_to(files)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(blob)
    return snapshot


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> tuple[Path, Path]:
    """A Hub cache holding org/tiny-gpt2 (random GPT-2 weights and a tokenizer, as gptjax exports them) and
    org/pickled (weights only as pytorch_model.bin); returns (cache, the exported model directory)."""
    root = tmp_path_factory.mktemp("hub")
    m = gptjax_model("gpt2")
    exported = root / "export"
    hf.export_hf(Config(model=m), random_params(m), char_tokenizer(m.vocab_size), exported)
    cache = root / "cache"
    cached_repo(cache, "org/tiny-gpt2", exported)
    pickled = root / "pickled"
    pickled.mkdir()
    shutil.copy(exported / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x02not really a pickle")
    cached_repo(cache, "org/pickled", pickled)
    return cache, exported


def test_a_revision_resolves_to_its_commit(hub_cache, monkeypatch):
    from gptjax import hub

    cache, exported = hub_cache
    for key, value in offline(cache).items():
        monkeypatch.setenv(key, value)
    for hub_id in ("org/tiny-gpt2", "org/tiny-gpt2@main", f"org/tiny-gpt2@{COMMIT}"):
        snapshot = hub.snapshot(hub_id, "--src")
        assert (snapshot.commit, snapshot.pinned_id) == (COMMIT, f"org/tiny-gpt2@{COMMIT}")
        assert (snapshot.path / "model.safetensors").read_bytes() == (exported / "model.safetensors").read_bytes()


def offline(cache: Path) -> dict:
    return {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "home")}


def test_import_by_hub_id_reads_the_cached_snapshot(hub_cache, tmp_path):
    cache, exported = hub_cache
    workdir = tmp_path / "imported"
    proc = run_cli(["import", "--format", "hf", "--src", "org/tiny-gpt2", "--workdir", str(workdir)],
                   env_extra=offline(cache))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"from org/tiny-gpt2@{COMMIT} into" in proc.stdout
    record = json.loads((workdir / "record.json").read_text())
    assert f"org/tiny-gpt2@{COMMIT}" in json.dumps(record), "the pinned commit is recorded, not the cache path"
    local = tmp_path / "local"
    hf.import_hf(exported, local)
    by_id, by_dir = gptjax.load(workdir), gptjax.load(local)
    ids = np.array([[1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(by_id.logits(ids), by_dir.logits(ids))


@pytest.mark.parametrize("src, fragments", [
    ("org/not-cached", ["org/not-cached", "HF_HUB_OFFLINE=1", "not in the Hub cache", "hf download org/not-cached"]),
    ("org/tiny-gpt2@no-such-branch", ["org/tiny-gpt2@no-such-branch", "HF_HUB_OFFLINE=1"]),
    ("org/pickled", ["pytorch_model.bin", "does not unpickle"]),
])
def test_what_the_hub_cannot_give_is_one_line(hub_cache, tmp_path, src, fragments):
    cache, _ = hub_cache
    workdir = tmp_path / "imported"
    proc = run_cli(["import", "--format", "hf", "--src", src, "--workdir", str(workdir)], env_extra=offline(cache))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr
    assert not workdir.exists()


# ---- prepare --input hf://datasets/...: files listed from the Hub (offline: the cache), each fetched when read ------


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory) -> Path:
    """A small corpus as a dataset repo holds it: JSONL and Parquet under data/, a README beside them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("hub_corpus")
    paragraphs = [json.loads(line)["text"] for line in (Path(__file__).parent / "fixtures" / "data" / "dedup" /
                                                         "inaugural_paragraphs.jsonl").read_text().splitlines()]
    (root / "data").mkdir()
    (root / "data" / "part-0.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in paragraphs[:30]))
    pq.write_table(pa.Table.from_pylist([{"text": t} for t in paragraphs[25:60]]), root / "data" / "part-1.parquet")
    (root / "README.md").write_text("# a corpus\n")
    return root


def prepare_args(inputs: str, out: Path) -> list[str]:
    return ["prepare", "--input", inputs, "--out", str(out), "--tokenizer", "char", "--dedup", "exact", "--quiet",
            "--workers", "1"]


def test_prepare_reads_a_hub_dataset_like_the_same_local_files(corpus_files, tmp_path):
    cache = tmp_path / "cache"
    cached_repo(cache, "org/corpus", corpus_files, repo_type="dataset")
    hub_out, local_out = tmp_path / "hub_out", tmp_path / "local_out"
    proc = run_cli(prepare_args("hf://datasets/org/corpus/data", hub_out), env_extra=offline(cache))
    assert proc.returncode == 0, proc.stderr[-2000:]
    local = run_cli(prepare_args(str(corpus_files / "data"), local_out))
    assert local.returncode == 0, local.stderr[-2000:]
    shards = sorted(path.name for path in local_out.glob("*-*.*"))
    assert shards == sorted(path.name for path in hub_out.glob("*-*.*")) and shards
    for name in shards:
        assert (hub_out / name).read_bytes() == (local_out / name).read_bytes(), name
    manifest = json.loads((hub_out / "manifest.json").read_text())
    assert manifest["inputs"] == [f"hf://datasets/org/corpus@{COMMIT}/data/part-0.jsonl",
                                  f"hf://datasets/org/corpus@{COMMIT}/data/part-1.parquet"]
    assert manifest["stages"]["dedup_exact"]["dropped"] == {"exact_duplicate": 5}


@pytest.mark.parametrize("inputs, fragments", [
    ("hf://datasets/org/not-cached", ["org/not-cached", "HF_HUB_OFFLINE=1",
                                      "hf download org/not-cached --repo-type dataset"]),
    ("hf://datasets/org/corpus/no-such-folder", ["holds no", "check the path inside the dataset"]),
    ("hf://datasets/org", ["hf://datasets/ORG/NAME[@REVISION][/PATH]"]),
])
def test_hub_inputs_that_cannot_be_read_are_one_line(corpus_files, tmp_path, inputs, fragments):
    cache = tmp_path / "cache"
    cached_repo(cache, "org/corpus", corpus_files, repo_type="dataset")
    proc = run_cli(prepare_args(inputs, tmp_path / "out"), env_extra=offline(cache))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
