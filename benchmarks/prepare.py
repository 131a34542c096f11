"""Throughput and peak memory of `gptjax prepare`, and HF datatrove's comparable pipeline on the same corpus.

The corpus (~100 MB of JSONL at --scale 1) is built under --work at run time from ../shared/data: web_noisy,
english_public_domain and multilingual texts cut into web-page-sized documents, then replicated until the target
size with planted duplicates: every sixth replica is an exact copy, two in six are near copies (1% and 3% of words
replaced: Jaccard of word 5-grams about 0.95 and 0.86) and three in six are distinct variants (25% of words
replaced). Stage figures come from each run's own report (gptjax: report.json busy seconds per stage, summed over
workers; datatrove: stats.json time per step, summed over tasks); peak memory is the sampled RSS of the whole
process tree.

    python benchmarks/prepare.py --work /tmp/gptjax_prepare_bench \
        [--datatrove-python /tmp/dtvenv/bin/python] [--workers 1 2] [--memory-scales 1 3]

writes benchmarks/results/prepare.md. With --datatrove-python, that interpreter (a venv with `pip install
"datatrove[processing]" spacy orjson tokenizers`) runs datatrove's filters + MinHash + tokenize on the same files.
This file is also the datatrove driver (`--datatrove-run`), so it imports gptjax only where gptjax runs.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results" / "prepare.md"
GPT2_FILES = REPO / "tests" / "fixtures" / "gpt2"
REPLICA_EDIT_RATES = (0.0, 0.01, 0.03, 0.25, 0.25, 0.25)
FILE_BYTES = 8 << 20
_WORD = re.compile(r"\S+")


# ---- corpus ------------------------------------------------------------------------------------------------------


def _read(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _line_groups(path: Path, lines_per_doc: int) -> list[str]:
    lines = [line for line in _read(path).splitlines() if line.strip()]
    return ["\n".join(lines[i:i + lines_per_doc]) for i in range(0, len(lines), lines_per_doc)]


def base_documents(shared: Path) -> list[str]:
    """Web-page-sized documents from the shared corpora, in a fixed order."""
    docs: list[str] = []
    for path in sorted((shared / "web_noisy" / "nltk_webtext").glob("*.txt")):
        docs += _line_groups(path, 30)
    docs += [_read(p) for p in sorted((shared / "web_noisy" / "cs336_a4_fixtures").rglob("*.txt"))]
    for folder in ("inaugural", "state_union"):
        docs += [_read(p) for p in sorted((shared / "english_public_domain" / folder).glob("*.txt"))]
    for path in sorted((shared / "multilingual" / "lingua_sentences").glob("*.txt")):
        docs += _line_groups(path, 25)
    docs += [_read(p) for p in sorted((shared / "multilingual" / "udhr" / "txt").glob("*.txt"))]
    return [d for d in docs if d.strip()]


def mutate(text: str, rate: float, rng: random.Random) -> str:
    """`text` with a `rate` share of its words replaced by other words of the same text."""
    if rate == 0.0:
        return text
    spans = [m.span() for m in _WORD.finditer(text)]
    if not spans:
        return text
    words = [text[a:b] for a, b in spans]
    pieces, last = [], 0
    for (start, end), word in zip(spans, words):
        pieces.append(text[last:start])
        pieces.append(rng.choice(words) if rng.random() < rate else word)
        last = end
    pieces.append(text[last:])
    return "".join(pieces)


def build_corpus(folder: Path, target_bytes: int, seed: int = 0) -> dict:
    """Writes JSONL files of about 8 MB under `folder` until `target_bytes`; returns counts of what was planted."""
    folder.mkdir(parents=True, exist_ok=True)
    base = base_documents(SHARED)
    rng = random.Random(seed)
    counts = {"documents": 0, "bytes": 0, "exact_copies": 0, "near_copies": 0, "base_documents": len(base)}
    handle, file_bytes, file_index = None, 0, 0
    replica = 0
    while counts["bytes"] < target_bytes:
        rate = 0.0 if replica == 0 else REPLICA_EDIT_RATES[(replica - 1) % len(REPLICA_EDIT_RATES)]
        for doc in base:
            if counts["bytes"] >= target_bytes:
                break
            text = doc if replica == 0 else mutate(doc, rate, rng)
            line = json.dumps({"text": text, "id": f"r{replica}-{counts['documents']}"}) + "\n"
            if handle is None or file_bytes >= FILE_BYTES:
                if handle:
                    handle.close()
                handle = open(folder / f"part-{file_index:04d}.jsonl", "w")
                file_index, file_bytes = file_index + 1, 0
            handle.write(line)
            file_bytes += len(line)
            counts["documents"] += 1
            counts["bytes"] += len(text.encode("utf-8", "surrogatepass"))
            if replica:
                kind = "exact_copies" if rate == 0.0 else "near_copies" if rate < 0.1 else "variants"
                counts[kind] = counts.get(kind, 0) + 1
        replica += 1
    if handle:
        handle.close()
    counts["files"] = file_index
    return counts


# ---- measuring a command -----------------------------------------------------------------------------------------


def run_measured(command: list[str], env: dict | None = None) -> tuple[float, int, subprocess.CompletedProcess]:
    """(wall seconds, peak RSS of the process tree in bytes, result) of a command."""
    import psutil

    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(process.pid)
        while not done.is_set():
            try:
                tree = [root] + root.children(recursive=True)
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    done.set()
    sampler.join()
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return time.perf_counter() - started, peak, result


# ---- gptjax ------------------------------------------------------------------------------------------------------


def gptjax_command(corpus: Path, out: Path, workers: int, tokenizer_dir: Path, languages: bool) -> list[str]:
    return [sys.executable, "-m", "gptjax", "prepare", "--input", str(corpus), "--out", str(out), "--dedup", "near",
            "--tokenizer", "gpt2_bpe", "--tokenizer-dir", str(tokenizer_dir), "--workers", str(workers), "--quiet",
            *(["--languages", "en"] if languages else [])]


def run_gptjax(corpus: Path, out: Path, workers: int, tokenizer_dir: Path, languages: bool = True) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    wall, peak, _ = run_measured(gptjax_command(corpus, out, workers, tokenizer_dir, languages))
    report = json.loads((out / "report.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {"wall": wall, "peak_rss": peak, "report": report, "workers": workers}


# ---- datatrove ---------------------------------------------------------------------------------------------------


def datatrove_run(corpus: Path, work: Path, workers: int, tokenizer_json: Path) -> None:
    """datatrove's filters + MinHash (20 buckets x 6 hashes, word 5-grams) + GPT-2 tokenization (runs in its venv)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    minhash = MinhashConfig(hash_config=HashConfig(precision=64), num_buckets=20, hashes_per_bucket=6, n_grams=5)
    n_files = len(list(corpus.glob("*.jsonl")))
    stages = {
        "filters+signatures": ([JsonlReader(str(corpus), glob_pattern="*.jsonl"), GopherRepetitionFilter(),
                                GopherQualityFilter(), JsonlWriter(str(work / "filtered"), compression=None),
                                MinhashDedupSignature(output_folder=str(work / "signatures"), config=minhash)], n_files),
        "buckets": ([MinhashDedupBuckets(input_folder=str(work / "signatures"), output_folder=str(work / "buckets"),
                                         config=minhash)], minhash.num_buckets),
        "cluster": ([MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove_ids"),
                                         config=minhash)], 1),
        "dedup-filter+tokenize": ([JsonlReader(str(work / "filtered"), glob_pattern="*.jsonl"),
                                   MinhashDedupFilter(input_folder=str(work / "remove_ids")),
                                   DocumentTokenizer(output_folder=str(work / "tokens"),
                                                     tokenizer_name_or_path=str(tokenizer_json),
                                                     eos_token="<|endoftext|>", shuffle_documents=False)], n_files),
    }
    timings = {}
    for name, (steps, tasks) in stages.items():
        started = time.perf_counter()
        LocalPipelineExecutor(pipeline=steps, tasks=tasks, workers=workers, logging_dir=str(work / "logs" / name),
                              skip_completed=False).run()
        stats = json.loads((work / "logs" / name / "stats.json").read_text())
        timings[name] = {"wall": time.perf_counter() - started,
                         "steps": [{"name": s["name"], "busy": s["time_stats"]["total"] if s.get("time_stats") else 0.0,
                                    "stats": s.get("stats", {})} for s in stats]}
    (work / "timings.json").write_text(json.dumps(timings, indent=1))


def make_tokenizer_json(dt_python: str, out: Path) -> Path:
    """GPT-2's byte-level BPE (the test fixtures' vocab/merges) as a `tokenizers` JSON file for datatrove."""
    code = ("import sys; from tokenizers import ByteLevelBPETokenizer as T; "
            "t = T(sys.argv[1], sys.argv[2]); t.add_special_tokens(['<|endoftext|>']); t.save(sys.argv[3])")
    subprocess.run([dt_python, "-c", code, str(GPT2_FILES / "gpt2_vocab.json"), str(GPT2_FILES / "gpt2_merges.txt"),
                    str(out)], check=True)
    return out


def run_datatrove(dt_python: str, corpus: Path, work: Path, workers: int, tokenizer_json: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    wall, peak, _ = run_measured([dt_python, str(Path(__file__).resolve()), "--datatrove-run", "--corpus", str(corpus),
                                  "--work", str(work), "--workers", str(workers), "--tokenizer-json", str(tokenizer_json)])
    timings = json.loads((work / "timings.json").read_text())
    shutil.rmtree(work, ignore_errors=True)
    return {"wall": wall, "peak_rss": peak, "timings": timings, "workers": workers}


# ---- results -----------------------------------------------------------------------------------------------------


def _rate(n: float, seconds: float) -> str:
    return f"{n / seconds:,.0f}" if seconds > 0 else "-"


def gptjax_stage_rows(run: dict) -> list[str]:
    rows = []
    for name, stage in run["report"]["stages"].items():
        busy = stage["seconds"]
        rows.append(f"| {name} | {stage['docs_in']:,} | {stage['docs_out']:,} | {stage['bytes_in'] / 1e6:,.1f} | "
                    f"{busy:.1f} | {_rate(stage['docs_in'], busy)} | "
                    f"{stage['bytes_in'] / 1e6 / busy if busy else 0:,.2f} |")
    return rows


def _docs_seen(stats: dict) -> int:
    """Documents a datatrove step handled, from its stats (readers count `documents`, other steps `total`)."""
    documents = stats.get("documents")
    if isinstance(documents, dict):
        return int(documents.get("total", 0))
    return int(stats.get("total", 0) or 0)


def exclusive_busy(steps: list[dict]) -> list[float]:
    """Busy seconds of each step alone: datatrove's MinHash signature step times its whole loop, upstream included."""
    busy = []
    for index, step in enumerate(steps):
        inclusive = "MinHash stage 1" in step["name"]
        busy.append(step["busy"] - sum(busy[:index]) if inclusive else step["busy"])
    return busy


def datatrove_stage_rows(run: dict) -> list[str]:
    rows = []
    for stage, timing in run["timings"].items():
        docs_before = 0
        for step, busy in zip(timing["steps"], exclusive_busy(timing["steps"])):
            stats = step["stats"]
            docs = _docs_seen(stats) or docs_before
            size = stats["doc_len"]["total"] if isinstance(stats.get("doc_len"), dict) else 0
            name = step["name"].encode("ascii", "ignore").decode().strip(" -:").replace("  ", " ")
            rows.append(f"| {stage} | {name} | {docs:,} | {size / 1e6:,.1f} | {busy:.1f} | {_rate(docs, busy)} |")
            docs_before = docs
    return rows


def _end_to_end_row(name: str, run: dict, counts: dict) -> str:
    mb = counts["bytes"] / 1e6
    return (f"| {name} | {run['workers']} | {run['wall']:.1f} | {_rate(counts['documents'], run['wall'])} | "
            f"{mb / run['wall']:.2f} | {mb / run['wall'] / run['workers']:.2f} | {run['peak_rss'] / 2**20:,.0f} MiB |")


def _corpus_line(counts: dict) -> str:
    return (f"{counts['documents']:,} documents, {counts['bytes'] / 1e6:,.1f} MB of text in {counts['files']} JSONL "
            f"files ({counts['base_documents']:,} base documents; {counts.get('exact_copies', 0):,} planted exact "
            f"copies, {counts.get('near_copies', 0):,} near copies, {counts.get('variants', 0):,} 25%-edited variants)")


def _gptjax_stage_section(title: str, run: dict) -> list[str]:
    lines = ["", f"## {title}", "", "Busy seconds are summed over worker processes, so docs/s and MB/s are per core.",
             "", "| stage | docs in | docs out | MB in | busy s | docs/s | MB/s |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines += gptjax_stage_rows(run)
    lines += ["", "Wall seconds per phase: " + ", ".join(f"{k} {v:.1f}" for k, v in run["report"]["wall_seconds"].items()),
              "", "Dropped: " + "; ".join(f"{name}: " + ", ".join(f"{r} {c:,}" for r, c in s["dropped"].items())
                                            for name, s in run["report"]["stages"].items() if s["dropped"])]
    return lines


def _per_core(mb: float, seconds: float) -> str:
    return f"{mb / seconds:.2f}" if seconds > 0 else "-"


def comparison_rows(ours: dict, theirs: dict) -> list[str]:
    """Per-core MB/s of the matching stages: Gopher rules, MinHash dedup, GPT-2 tokenization."""
    stages = ours["report"]["stages"]
    steps = [(stage, step, busy) for stage, timing in theirs["timings"].items()
             for step, busy in zip(timing["steps"], exclusive_busy(timing["steps"]))]

    def their_busy(*needles: str) -> float:
        return sum(busy for _, step, busy in steps if any(n in step["name"] for n in needles))

    def their_mb(needle: str) -> float:
        sizes = [step["stats"]["doc_len"]["total"] for _, step, _ in steps
                 if needle in step["name"] and isinstance(step["stats"].get("doc_len"), dict)]
        return sizes[0] / 1e6 if sizes else 0.0

    quality_mb = stages["quality"]["bytes_in"] / 1e6
    near_mb = stages["dedup_exact"]["bytes_in"] / 1e6
    tok_mb = stages["tokenize"]["bytes_in"] / 1e6
    dedup_busy = stages["dedup_exact"]["seconds"] + stages["dedup_near"]["seconds"]
    rows = [f"| Gopher quality + repetition rules | {quality_mb:,.1f} | {_per_core(quality_mb, stages['quality']['seconds'])} | "
            f"{their_mb('Gopher Repetition'):,.1f} | "
            f"{_per_core(their_mb('Gopher Repetition'), their_busy('Gopher Repetition', 'Gopher Quality'))} |",
            f"| MinHash dedup (signatures, LSH, clusters, removal) | {near_mb:,.1f} | {_per_core(near_mb, dedup_busy)} | "
            f"{their_mb('WRITER'):,.1f} | "
            f"{_per_core(their_mb('WRITER'), their_busy('MinHash'))} |",
            f"| GPT-2 BPE tokenization | {tok_mb:,.1f} | {_per_core(tok_mb, stages['tokenize']['seconds'])} | "
            f"{their_mb('WRITER'):,.1f} | {_per_core(their_mb('WRITER'), their_busy('TOKENIZER'))} |"]
    return rows


def write_results(args, counts: dict, runs: list[dict], compare_counts: dict | None, compare: list[tuple[dict, dict]],
                  memory: list[dict], datatrove_note: str) -> None:
    lines = ["# `gptjax prepare` throughput and memory", "",
             "Command (repository root; this machine: 2 cores shared with other jobs, so timings are noisy):", "",
             f"    {' '.join(args.command_line)}", "",
             f"Corpus (1x, built by the script from shared/data): {_corpus_line(counts)}.", "",
             "gptjax settings: `--languages en --dedup near --tokenizer gpt2_bpe` (normalization and Gopher quality "
             "rules on, MinHash 120 permutations / 20 bands x 6 rows / word 5-grams, candidate pairs verified at "
             "Jaccard >= 0.8; GPT-2 BPE from the local vocab/merges).", "", "## End to end, 1x corpus", "",
             "| pipeline | workers | wall s | docs/s | MB/s | MB/s per worker | peak RSS (tree) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [_end_to_end_row("gptjax", run, counts) for run in runs]
    for run in runs:
        lines += _gptjax_stage_section(f"gptjax stages, 1x corpus, {run['workers']} worker(s)", run)
    if compare:
        lines += ["", "## gptjax against datatrove, same corpus", "",
                  f"Corpus: {_corpus_line(compare_counts)}. Both pipelines: Gopher quality and repetition rules, "
                  "MinHash with 20 bands x 6 rows over word 5-grams, GPT-2 BPE token ids with `<|endoftext|>`. "
                  "No language filter in either (datatrove's needs a fastText model download, impossible here). "
                  "datatrove: `LocalPipelineExecutor` stages reader -> GopherRepetitionFilter -> GopherQualityFilter "
                  "-> JsonlWriter -> MinhashDedupSignature; MinhashDedupBuckets; MinhashDedupCluster; reader -> "
                  "MinhashDedupFilter -> DocumentTokenizer (HF `tokenizers`, Rust). gptjax tokenizes with its "
                  "pure-Python GPT-2 BPE (same ids).", "",
                  "| pipeline | workers | wall s | docs/s | MB/s | MB/s per worker | peak RSS (tree) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for ours, theirs in compare:
            lines += [_end_to_end_row("gptjax", ours, compare_counts), _end_to_end_row("datatrove", theirs, compare_counts)]
        for ours, theirs in compare:
            lines += ["", f"Per-core MB/s by stage ({ours['workers']} worker(s); busy seconds summed over processes):",
                      "", "| stage | gptjax MB in | gptjax MB/s/core | datatrove MB in | datatrove MB/s/core |",
                      "|---|---:|---:|---:|---:|"]
            lines += comparison_rows(ours, theirs)
            lines += _gptjax_stage_section(f"gptjax stages, comparison corpus, {ours['workers']} worker(s)", ours)
            lines += ["", f"## datatrove steps, comparison corpus, {theirs['workers']} worker(s)", "",
                      "Busy seconds per step summed over tasks (datatrove's stats.json; the MinHash signature step's "
                      "own time is its total minus the steps before it, which it times inclusively).", "",
                      "| stage | step | docs | MB | busy s | docs/s |", "|---|---|---:|---:|---:|---:|"]
            lines += datatrove_stage_rows(theirs)
            lines += ["", "Wall seconds per stage: " + ", ".join(f"{k} {v['wall']:.1f}" for k, v in theirs["timings"].items())]
    if datatrove_note:
        lines += ["", datatrove_note]
    lines += ["", "## Peak memory against corpus size", "",
              "| corpus | MB | workers | wall s | peak RSS (tree) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {e['scale']:g}x | {e['mb']:,.0f} | {e['workers']} | {e['wall']:.1f} | {e['peak_rss'] / 2**20:,.0f} MiB |"
              for e in memory]
    lines += ["", args.notes] if args.notes else []
    RESULTS.write_text("\n".join(lines) + "\n")


# ---- main --------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/gptjax_prepare_bench")
    parser.add_argument("--scale", type=float, default=1.0, help="corpus size in units of 100 MB")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--memory-scales", type=float, nargs="*", default=[3.0])
    parser.add_argument("--datatrove-python", default="")
    parser.add_argument("--compare-scale", type=float, default=0.2, help="corpus size for the datatrove comparison")
    parser.add_argument("--compare-workers", type=int, nargs="+", default=[2])
    parser.add_argument("--notes", default="")
    parser.add_argument("--datatrove-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.datatrove_run:
        datatrove_run(Path(args.corpus), Path(args.work), args.workers[0], Path(args.tokenizer_json))
        return
    args.command_line = ["python", "benchmarks/prepare.py", *sys.argv[1:]]
    work = Path(args.work)
    tokenizer_dir = work / "gpt2"
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(GPT2_FILES / "gpt2_vocab.json", tokenizer_dir / "vocab.json")
    shutil.copy(GPT2_FILES / "gpt2_merges.txt", tokenizer_dir / "merges.txt")

    corpus = work / "corpus"
    shutil.rmtree(corpus, ignore_errors=True)
    counts = build_corpus(corpus, int(args.scale * 100e6))
    print(f"corpus: {counts}", flush=True)
    runs = []
    for workers in args.workers:
        runs.append(run_gptjax(corpus, work / "out", workers, tokenizer_dir))
        print(f"gptjax workers={workers}: {runs[-1]['wall']:.1f} s, peak {runs[-1]['peak_rss'] / 2**20:.0f} MiB", flush=True)
    memory = [{"scale": args.scale, "mb": counts["bytes"] / 1e6, "workers": r["workers"], "wall": r["wall"],
               "peak_rss": r["peak_rss"]} for r in runs if r["workers"] == max(args.workers)]
    shutil.rmtree(corpus, ignore_errors=True)

    compare, compare_counts, note = [], None, "datatrove was not run (no --datatrove-python given)."
    if args.datatrove_python:
        note = ""
        small = work / "corpus-compare"
        shutil.rmtree(small, ignore_errors=True)
        compare_counts = build_corpus(small, int(args.compare_scale * 100e6))
        tokenizer_json = make_tokenizer_json(args.datatrove_python, work / "gpt2_tokenizer.json")
        for workers in args.compare_workers:
            ours = run_gptjax(small, work / "out", workers, tokenizer_dir, languages=False)
            theirs = run_datatrove(args.datatrove_python, small, work / "datatrove", workers, tokenizer_json)
            compare.append((ours, theirs))
            print(f"compare workers={workers}: gptjax {ours['wall']:.1f} s, datatrove {theirs['wall']:.1f} s", flush=True)
        shutil.rmtree(small, ignore_errors=True)

    for scale in args.memory_scales:
        big = work / f"corpus-{scale:g}x"
        shutil.rmtree(big, ignore_errors=True)
        big_counts = build_corpus(big, int(scale * 100e6))
        run = run_gptjax(big, work / "out", max(args.workers), tokenizer_dir)
        memory.append({"scale": scale, "mb": big_counts["bytes"] / 1e6, "workers": run["workers"], "wall": run["wall"],
                       "peak_rss": run["peak_rss"]})
        print(f"gptjax {scale:g}x: {run['wall']:.1f} s, peak {run['peak_rss'] / 2**20:.0f} MiB", flush=True)
        shutil.rmtree(big, ignore_errors=True)
    write_results(args, counts, runs, compare_counts, compare, memory, note)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
