"""`gptjax prepare --runner beam` (Beam's DirectRunner, N worker processes) against the local runner (N processes) on
benchmarks/prepare.py's planted corpus (~100 MB of JSONL at --scale 1: exact copies, near copies, edited variants):
wall time and peak RSS of the whole process tree, alternating runs (local, beam, local, beam, ...), medians; and a
check that both wrote the same shards, byte for byte.

    python benchmarks/prepare_beam.py --work /tmp/gptjax_beam_bench [--scale 1] [--workers 2] [--rounds 2]

writes benchmarks/results/prepare_beam.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prepare as prepare_bench  # noqa: E402  (benchmarks/prepare.py: the corpus and the measuring)

REPO = prepare_bench.REPO
RESULTS = REPO / "benchmarks" / "results" / "prepare_beam.md"


def gpt2_dir(work: Path) -> Path:
    """GPT-2's vocab.json and merges.txt under the names `--tokenizer-dir` expects."""
    folder = work / "gpt2"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(prepare_bench.GPT2_FILES / "gpt2_vocab.json", folder / "vocab.json")
    shutil.copy(prepare_bench.GPT2_FILES / "gpt2_merges.txt", folder / "merges.txt")
    return folder


def command(corpus: Path, out: Path, workers: int, runner: str) -> list[str]:
    base = prepare_bench.gptjax_command(corpus, out, workers, gpt2_dir(out.parent), languages=True)
    if runner == "local":
        return base
    return [*base, "--runner", "beam", "--", "--runner=DirectRunner", "--direct_running_mode=multi_processing",
            f"--direct_num_workers={workers}", "--default_sdk_harness_log_level=ERROR"]


def shard_digest(out: Path) -> str:
    """One hash over every shard and document index, in name order."""
    digest = hashlib.sha256()
    for path in sorted(out.glob("*-*.bin")) + sorted(out.glob("*-*.idx")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run_once(corpus: Path, work: Path, workers: int, runner: str) -> dict:
    out = work / f"out_{runner}"
    shutil.rmtree(out, ignore_errors=True)
    wall, peak, _ = prepare_bench.run_measured(command(corpus, out, workers, runner))
    report = json.loads((out / "report.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    result = {"wall": wall, "peak_rss": peak, "phases": report["wall_seconds"], "digest": shard_digest(out),
              "tokens": manifest["splits"]["train"]["n_tokens"] + manifest["splits"]["val"]["n_tokens"],
              "kept": report["stages"]["shard"]["docs_out"]}
    shutil.rmtree(out, ignore_errors=True)
    return result


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_results(args, counts: dict, runs: dict[str, list[dict]]) -> str:
    median = {runner: {"wall": statistics.median(r["wall"] for r in rs),
                       "peak": statistics.median(r["peak_rss"] for r in rs)} for runner, rs in runs.items()}
    same = len({r["digest"] for rs in runs.values() for r in rs}) == 1
    phase_names = list(runs["local"][0]["phases"])
    lines = [
        "# `gptjax prepare`: Apache Beam (DirectRunner) vs the local runner", "",
        "Command (repository root):", "",
        f"    python benchmarks/prepare_beam.py --work {args.work} --scale {args.scale} --workers {args.workers} "
        f"--rounds {args.rounds}", "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end.", "",
        f"Corpus (built by benchmarks/prepare.py from shared/data): {counts['documents']:,} documents, "
        f"{counts['bytes'] / 1e6:.1f} MB of text in {counts['files']} JSONL files ({counts['exact_copies']:,} exact "
        f"copies, {counts['near_copies']:,} near copies planted). Settings: `--languages en --dedup near --tokenizer "
        f"gpt2_bpe`, {args.workers} worker processes on both sides; runs alternate, medians of {args.rounds}.", "",
        "| runner | wall s (median) | each run | peak RSS, process tree |",
        "|---|---:|---|---:|",
    ]
    for runner in ("local", "beam"):
        each = ", ".join(f"{r['wall']:.1f}" for r in runs[runner])
        lines.append(f"| {runner} | {median[runner]['wall']:.1f} | {each} | {median[runner]['peak'] / 2**20:.0f} MiB |")
    lines += ["", f"Beam / local wall time: {median['beam']['wall'] / median['local']['wall']:.2f}x. Shards and "
              f"indexes identical across all runs: {'yes' if same else 'NO'} "
              f"({runs['local'][0]['kept']:,} documents kept, {runs['local'][0]['tokens']:,} tokens).", "",
              "Wall seconds per phase (first run of each):", "",
              "| runner | " + " | ".join(phase_names) + " |", "|---|" + "---:|" * len(phase_names)]
    for runner in ("local", "beam"):
        phases = runs[runner][0]["phases"]
        lines.append(f"| {runner} | " + " | ".join(f"{phases.get(name, 0):.1f}" for name in phase_names) + " |")
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/gptjax_beam_bench")
    parser.add_argument("--scale", type=float, default=1.0, help="corpus size in units of 100 MB")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(args.work)
    corpus = work / f"corpus_{args.scale:g}"
    counts_path = work / f"corpus_{args.scale:g}.counts.json"
    if not counts_path.is_file():
        shutil.rmtree(corpus, ignore_errors=True)
        counts = prepare_bench.build_corpus(corpus, int(args.scale * 100e6))
        counts_path.write_text(json.dumps(counts))
    counts = json.loads(counts_path.read_text())
    runs: dict[str, list[dict]] = {"local": [], "beam": []}
    for round_number in range(args.rounds):
        for runner in ("local", "beam"):
            runs[runner].append(run_once(corpus, work, args.workers, runner))
            print(f"round {round_number + 1} {runner}: {runs[runner][-1]['wall']:.1f} s", flush=True)
    print(write_results(args, counts, runs))


if __name__ == "__main__":
    main()
