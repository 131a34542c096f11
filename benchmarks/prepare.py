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

`--mode near-recall` measures near-duplicate dedup alone on a planted corpus (gptjax.testing.planted: distinct base
documents cut from shared/data's web_noisy web postings and english_public_domain addresses, plus copies of each
kind — identical, paragraphs reordered, 1-8% of words substituted / deleted / inserted / mixed, header and footer
lines added — and hard negatives that share boilerplate, source or a quoted paragraph): precision and recall per
kind for gptjax's defaults (`near_duplicate_clusters`: shingles, MinHash, LSH, verified clusters) and for
datatrove's default MinHash (MinhashDedupSignature -> Buckets -> Cluster -> Filter), and the speed of both from
JSONL in to kept JSONL out, one process each, alternating runs (A B A B ...), medians:

    python benchmarks/prepare.py --mode near-recall --datatrove-python DT_PYTHON [--copies 100] [--repeats 3]

writes benchmarks/results/near_dedup.md. DT_PYTHON needs datatrove with spacy and xxhash<4 (datatrove 0.10
hashes str, which xxhash 4 refuses).
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
NEAR_RESULTS = REPO / "benchmarks" / "results" / "near_dedup.md"
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


def gptjax_minhash_shape() -> tuple[int, int, int]:
    """(word n-gram, bands, rows) of gptjax's default near dedup, which the throughput comparison gives datatrove."""
    from gptjax.prepare.dedup import MinHashConfig

    config = MinHashConfig()
    return config.ngram, config.bands, config.rows


def datatrove_run(
    corpus: Path, work: Path, workers: int, tokenizer_json: Path, minhash_shape: tuple[int, int, int]
) -> None:
    """datatrove's filters + MinHash (gptjax's n-gram, bands and rows) + GPT-2 tokenization (runs in its venv)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    ngram, bands, rows = minhash_shape
    minhash = MinhashConfig(
        hash_config=HashConfig(precision=64), num_buckets=bands, hashes_per_bucket=rows, n_grams=ngram
    )
    n_files = len(list(corpus.glob("*.jsonl")))
    stages = {
        "filters+signatures": ([JsonlReader(str(corpus), glob_pattern="*.jsonl"), GopherRepetitionFilter(),
                                GopherQualityFilter(), JsonlWriter(str(work / "filtered"), compression=None),
                                MinhashDedupSignature(output_folder=str(work / "signatures"), config=minhash)],
                               n_files),
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
                                  "--work", str(work), "--workers", str(workers),
                                  "--tokenizer-json", str(tokenizer_json),
                                  "--minhash-shape", ",".join(map(str, gptjax_minhash_shape()))])
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
             "", "| stage | docs in | docs out | MB in | busy s | docs/s | MB/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += gptjax_stage_rows(run)
    lines += ["",
              "Wall seconds per phase: " + ", ".join(f"{k} {v:.1f}" for k, v in run["report"]["wall_seconds"].items()),
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
    rows = [f"| Gopher quality + repetition rules | {quality_mb:,.1f} | "
            f"{_per_core(quality_mb, stages['quality']['seconds'])} | "
            f"{their_mb('Gopher Repetition'):,.1f} | "
            f"{_per_core(their_mb('Gopher Repetition'), their_busy('Gopher Repetition', 'Gopher Quality'))} |",
            f"| MinHash dedup (signatures, LSH, clusters, removal) | {near_mb:,.1f} | "
            f"{_per_core(near_mb, dedup_busy)} | "
            f"{their_mb('WRITER'):,.1f} | "
            f"{_per_core(their_mb('WRITER'), their_busy('MinHash'))} |",
            f"| GPT-2 BPE tokenization | {tok_mb:,.1f} | {_per_core(tok_mb, stages['tokenize']['seconds'])} | "
            f"{their_mb('WRITER'):,.1f} | {_per_core(their_mb('WRITER'), their_busy('TOKENIZER'))} |"]
    return rows


def write_results(args, counts: dict, runs: list[dict], compare_counts: dict | None, compare: list[tuple[dict, dict]],
                  memory: list[dict], datatrove_note: str) -> None:
    ngram, bands, rows = gptjax_minhash_shape()
    lines = ["# `gptjax prepare` throughput and memory", "",
             "Command (repository root; this machine: 2 cores shared with other jobs, so timings are noisy):", "",
             f"    {' '.join(args.command_line)}", "",
             f"Corpus (1x, built by the script from shared/data): {_corpus_line(counts)}.", "",
             "gptjax settings: `--languages en --dedup near --tokenizer gpt2_bpe` (normalization and Gopher quality "
             f"rules on, MinHash {bands * rows} permutations / {bands} bands x {rows} rows / word {ngram}-grams, "
             "candidate pairs verified (the `MinHashConfig()` defaults); GPT-2 BPE from the local vocab/merges).", "",
             "## End to end, 1x corpus", "",
             "| pipeline | workers | wall s | docs/s | MB/s | MB/s per worker | peak RSS (tree) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [_end_to_end_row("gptjax", run, counts) for run in runs]
    for run in runs:
        lines += _gptjax_stage_section(f"gptjax stages, 1x corpus, {run['workers']} worker(s)", run)
    if compare:
        lines += ["", "## gptjax against datatrove, same corpus", "",
                  f"Corpus: {_corpus_line(compare_counts)}. Both pipelines: Gopher quality and repetition rules, "
                  f"MinHash with {bands} bands x {rows} rows over word {ngram}-grams, GPT-2 BPE token ids with "
                  "`<|endoftext|>`. "
                  "No language filter in either (datatrove's needs a fastText model download, impossible here). "
                  "datatrove: `LocalPipelineExecutor` stages reader -> GopherRepetitionFilter -> GopherQualityFilter "
                  "-> JsonlWriter -> MinhashDedupSignature; MinhashDedupBuckets; MinhashDedupCluster; reader -> "
                  "MinhashDedupFilter -> DocumentTokenizer (HF `tokenizers`, Rust). gptjax tokenizes with its "
                  "pure-Python GPT-2 BPE (same ids).", "",
                  "| pipeline | workers | wall s | docs/s | MB/s | MB/s per worker | peak RSS (tree) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for ours, theirs in compare:
            lines += [_end_to_end_row("gptjax", ours, compare_counts),
                      _end_to_end_row("datatrove", theirs, compare_counts)]
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
            lines += ["", "Wall seconds per stage: "
                      + ", ".join(f"{k} {v['wall']:.1f}" for k, v in theirs["timings"].items())]
    if datatrove_note:
        lines += ["", datatrove_note]
    lines += ["", "## Peak memory against corpus size", "",
              "| corpus | MB | workers | wall s | peak RSS (tree) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {e['scale']:g}x | {e['mb']:,.0f} | {e['workers']} | {e['wall']:.1f} | "
              f"{e['peak_rss'] / 2**20:,.0f} MiB |"
              for e in memory]
    lines += ["", args.notes] if args.notes else []
    RESULTS.write_text("\n".join(lines) + "\n")


# ---- near-duplicate recall: planted copies, gptjax against datatrove's MinHash ------------------------------------

EDIT_RATE_BANDS = ((0.01, 0.03), (0.03, 0.055), (0.055, 0.0801))
OLD_SETTINGS_SIDE = "gptjax 5-gram/0.8"


def planted_bases(shared: Path, words: int) -> list:
    """Distinct base documents: web postings cut into documents of about `words` words, addresses into ones of
    twice that."""
    from gptjax.prepare.readers import read_documents
    from gptjax.testing.planted import BaseDocument, cut_documents

    groups = [(sorted((shared / "web_noisy" / "nltk_webtext").glob("*.txt")), words)]
    groups += [(sorted((shared / "english_public_domain" / folder).glob("*.txt")), 2 * words)
               for folder in ("inaugural", "state_union")]
    return [BaseDocument(text, Path(document.source).parent.name + "/" + Path(document.source).stem)
            for paths, words in groups for document in read_documents(paths)
            for text in cut_documents(document.text, words)]


def gptjax_near_run(corpus: Path, work: Path) -> None:
    """gptjax's default near dedup from JSONL to kept JSONL (runs in its own process); writes roots and timings."""
    import numpy as np

    from gptjax.prepare import dedup

    config = dedup.MinHashConfig()
    marks = {"start": time.perf_counter()}
    with corpus.open(encoding="utf-8") as lines:
        texts = [json.loads(line)["text"] for line in lines]
    marks["read"] = time.perf_counter()
    pairs = [dedup.text_signature(text, config) for text in texts]
    marks["signatures"] = time.perf_counter()
    roots, counters = dedup.cluster_signatures([pair[1] for pair in pairs], [pair[0] for pair in pairs], config)
    marks["cluster"] = time.perf_counter()
    with (work / "kept.jsonl").open("w", encoding="utf-8") as kept:
        kept.writelines(json.dumps({"text": text}) + "\n" for index, text in enumerate(texts) if roots[index] == index)
    marks["write"] = time.perf_counter()
    np.save(work / "roots.npy", roots)
    _write_near_timings(work, marks, counters)


def datatrove_near_run(corpus: Path, work: Path) -> None:
    """datatrove's default MinHash dedup, its four stages from JSONL to kept JSONL (runs in its own process)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    minhash = MinhashConfig()
    stages = {
        "signatures": ([JsonlReader(str(corpus.parent), glob_pattern=corpus.name),
                        MinhashDedupSignature(output_folder=str(work / "signatures"), config=minhash)], 1),
        "buckets": ([MinhashDedupBuckets(input_folder=str(work / "signatures"), output_folder=str(work / "buckets"),
                                         config=minhash)], minhash.num_buckets),
        "cluster": ([MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove_ids"),
                                         config=minhash)], 1),
        "filter": ([JsonlReader(str(corpus.parent), glob_pattern=corpus.name),
                    MinhashDedupFilter(input_folder=str(work / "remove_ids")),
                    JsonlWriter(str(work / "kept"), compression=None)], 1),
    }
    marks = {"start": time.perf_counter()}
    for name, (steps, tasks) in stages.items():
        LocalPipelineExecutor(pipeline=steps, tasks=tasks, workers=1, logging_dir=str(work / "logs" / name),
                              skip_completed=False).run()
        marks[name] = time.perf_counter()
    _write_near_timings(work, marks, {})


def _write_near_timings(work: Path, marks: dict, counters: dict) -> None:
    names = list(marks)
    stages = {name: marks[name] - marks[previous] for previous, name in zip(names, names[1:])}
    (work / "timings.json").write_text(json.dumps({"seconds": marks[names[-1]] - marks["start"], "stages": stages,
                                                   "counters": counters}))


def datatrove_roots(work: Path, n_docs: int):
    """Cluster representative of every document from datatrove's duplicate pairs (its .dups files: file, doc, file,
    doc as uint32; one input file), joined as its cluster stage joins them."""
    import numpy as np

    from gptjax.testing.planted import roots_from_pairs

    pairs = [np.fromfile(path, dtype="<u4").reshape(-1, 4)[:, [1, 3]]
             for path in sorted((work / "buckets").glob("*.dups"))]
    return roots_from_pairs(n_docs, np.concatenate(pairs).tolist() if pairs else [])


def prepare_near_run(corpus: Path, work: Path) -> None:
    """`gptjax prepare --dedup near` (no other filter, char tokens) on the corpus; its dedup stages' busy seconds
    from report.json are the timing, its decisions file gives the clusters."""
    command = [sys.executable, "-m", "gptjax", "prepare", "--input", str(corpus), "--out", str(work / "out"),
               "--dedup", "near", "--no-quality", "--no-normalize", "--tokenizer", "char", "--workers", "1",
               "--quiet", "--decisions", str(work / "decisions.jsonl")]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    stages = json.loads((work / "out" / "report.json").read_text())["stages"]
    dedup_stages = {name: stages[name]["seconds"] for name in ("dedup_exact", "dedup_near")}
    (work / "timings.json").write_text(json.dumps({"seconds": sum(dedup_stages.values()), "stages": dedup_stages,
                                                   "counters": {}, "prepare_wall": time.perf_counter() - started}))


def near_roots(side: str, work: Path, n_docs: int):
    """The clusters one side's run found, as the representative of every document."""
    import numpy as np

    from gptjax.testing.planted import decision_pairs, roots_from_pairs

    if side == "gptjax":
        return np.load(work / "roots.npy")
    if side == "datatrove":
        return datatrove_roots(work, n_docs)
    records = [json.loads(line) for line in (work / "decisions.jsonl").read_text().splitlines()]
    return roots_from_pairs(n_docs, decision_pairs(records))


def run_near_once(python: str, side: str, corpus: Path, work: Path) -> dict:
    """One timed run of one side in a fresh process: in-process seconds, wall seconds, roots (gptjax) or work dir."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    wall, peak, _ = run_measured([python, str(Path(__file__).resolve()), "--near-run", side, "--corpus", str(corpus),
                                  "--work", str(work)])
    return {"wall": wall, "peak_rss": peak, **json.loads((work / "timings.json").read_text())}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _score_cells(score, copy_kind: bool) -> str:
    if copy_kind:
        return f"{score.recall:.3f} ({score.caught}/{score.documents}) | {score.precision:.3f}"
    wrong = score.pairs - score.correct_pairs
    return f"- | {score.precision:.3f} ({wrong} wrong pairs)"


def near_quality_rows(corpus, scores: dict[str, dict]) -> list[str]:
    """Per kind: documents, then recall and pairwise precision of each side."""
    from gptjax.testing.planted import COPY_KINDS, NEGATIVE_KINDS

    rows = []
    for kind in COPY_KINDS + NEGATIVE_KINDS + ("all",):
        copy_kind = kind in COPY_KINDS or kind == "all"
        n = scores["gptjax"][kind].documents if copy_kind else corpus.kinds.count(kind)
        rows.append(f"| {kind} | {n} | " + " | ".join(_score_cells(side_scores[kind], copy_kind)
                                                      for side_scores in scores.values()) + " |")
    return rows


def recall_by_edit_rate(corpus, roots) -> list[tuple[int, int]]:
    """(caught, copies) of the word-edit copies in each band of EDIT_RATE_BANDS."""
    from gptjax.testing.planted import WORD_EDIT_KINDS

    counts = []
    for low, high in EDIT_RATE_BANDS:
        copies = [i for i, kind in enumerate(corpus.kinds)
                  if kind in WORD_EDIT_KINDS and low <= corpus.edit_rates[i] < high]
        counts.append((sum(int(roots[i] == roots[corpus.copy_of[i]]) for i in copies), len(copies)))
    return counts


NEAR_SIDE_NOTES = {
    "gptjax": "`gptjax.prepare.dedup` in memory: read JSONL, `text_signature` per document, `cluster_signatures` "
              "(LSH + Jaccard verification), write the kept documents",
    "datatrove": "MinhashDedupSignature (reader), MinhashDedupBuckets (14 tasks), MinhashDedupCluster, "
                 "MinhashDedupFilter (reader + JsonlWriter); `LocalPipelineExecutor`, 1 worker",
    "gptjax-prepare": "`gptjax prepare --dedup near --no-quality --no-normalize --tokenizer char --workers 1`: "
                      "busy seconds of its dedup_exact + dedup_near stages (report.json: signatures in the clean "
                      "phase, exact keys, LSH clustering with verification re-reading texts from chunk files)",
}


def write_near_results(args, corpus, n_bytes: int, runs: dict[str, list[dict]], scores: dict[str, dict],
                       rate_rows: dict[str, list[tuple[int, int]]]) -> None:
    from gptjax.prepare.dedup import MinHashConfig

    config = MinHashConfig()
    sides, timed_sides = list(scores), list(runs)
    lines = ["# Near-duplicate recall and speed: gptjax against datatrove on planted copies", "",
             "Command (repository root; 2 cores shared with other jobs, so timings are noisy):", "",
             f"    {' '.join(args.command_line)}", "",
             f"Corpus: {len(corpus.texts):,} documents, {n_bytes / 1e6:.1f} MB "
             f"(`gptjax.testing.planted.plant_corpus`, seed "
             f"{args.seed}, {args.copies} copies per kind, {args.copies} negatives per kind, "
             f"word edits at a rate drawn "
             f"uniformly from 1-8%; base documents: shared/data web_noisy/nltk_webtext cut into ~{args.words}-word "
             f"documents, english_public_domain inaugural and state_union addresses into ~{2 * args.words}-word "
             "ones).", "",
             f"gptjax: `MinHashConfig()` defaults — word {config.ngram}-grams, {config.num_perm} permutations, "
             f"{config.bands} bands x {config.rows} rows, candidate pairs verified by the true Jaccard of their "
             f"shingle sets >= {config.threshold}. datatrove 0.10: `MinhashConfig()` defaults — word 5-grams (spaCy "
             "tokenizer), 14 buckets x 8 hashes, 64-bit xxhash, no verification. gptjax-prepare: the same defaults "
             f"through `gptjax prepare`. {OLD_SETTINGS_SIDE} (quality only): gptjax's previous defaults — word "
             "5-grams, 20 bands x 6 rows, verified Jaccard >= 0.8.", "",
             "Recall: copies clustered with their original. Precision: predicted duplicate pairs touching a document "
             "of the kind that are a copy and its original (for negatives every pair is wrong).", "",
             "| kind | documents | " + " | ".join(f"{side} recall | {side} precision" for side in sides) + " |",
             "|---|---:|" + "---:|---:|" * len(sides)]
    lines += near_quality_rows(corpus, scores)
    lines += ["", "Word-edit copies (substitute, delete, insert, mixed) by share of words edited:", "",
              "| words edited | copies | " + " | ".join(f"{side} recall" for side in sides) + " |",
              "|---|---:|" + "---:|" * len(sides)]
    for band, (low, high) in enumerate(EDIT_RATE_BANDS):
        n = rate_rows[sides[0]][band][1]
        lines.append(f"| {low:.1%}-{min(high, 0.08):.1%} | {n} | " + " | ".join(
            f"{rate_rows[side][band][0] / max(n, 1):.3f}" for side in sides) + " |")
    medians = {side: _median([run["seconds"] for run in side_runs]) for side, side_runs in runs.items()}
    lines += ["", f"## Speed ({args.repeats} runs of each, alternating {', '.join(timed_sides)}, ...; medians)", "",
              "Seconds from reading the JSONL to writing the kept documents, in the process (imports and interpreter "
              "start excluded; wall is the whole process).", "",
              "| pipeline | what is timed | seconds | docs/s | MB/s | wall s | peak RSS | runs (s) |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for side, side_runs in runs.items():
        seconds = medians[side]
        lines.append(f"| {side} | {NEAR_SIDE_NOTES[side]} | {seconds:.2f} | {len(corpus.texts) / seconds:,.0f} | "
                     f"{n_bytes / 1e6 / seconds:.2f} | {_median([run['wall'] for run in side_runs]):.2f} | "
                     f"{_median([run['peak_rss'] for run in side_runs]) / 2**20:,.0f} MiB | "
                     + ", ".join(f"{run['seconds']:.2f}" for run in side_runs) + " |")
    lines += ["", "datatrove takes " + "; ".join(f"{medians['datatrove'] / medians[side]:.1f}x the time of {side}"
                                                 for side in timed_sides if side != "datatrove") + ".", "",
              "Median seconds per stage:", ""]
    for side, side_runs in runs.items():
        lines.append(f"- {side}: " + ", ".join(f"{name} {_median([run['stages'][name] for run in side_runs]):.2f}"
                                              for name in side_runs[0]["stages"]))
    counters = runs["gptjax"][0]["counters"]
    lines += ["", f"gptjax candidate work: {counters['candidate_groups']:,} band groups, "
              f"{counters['verified_comparisons']:,} verified comparisons."]
    Path(args.results).write_text("\n".join(lines) + "\n")


def run_near_recall(args) -> None:
    """The near-recall mode: build the planted corpus, run the sides alternately, score them, write the results."""
    import numpy as np

    from gptjax.prepare.dedup import MinHashConfig, near_duplicate_clusters
    from gptjax.testing.planted import plant_corpus, score_clusters

    if not args.datatrove_python:
        raise SystemExit("--mode near-recall needs --datatrove-python (an interpreter with datatrove and spacy)")
    work = Path(args.work) / "near"
    work.mkdir(parents=True, exist_ok=True)
    corpus = plant_corpus(planted_bases(SHARED, args.words), args.copies, args.copies, seed=args.seed)
    corpus_path = work / "corpus" / "planted.jsonl"
    corpus_path.parent.mkdir(exist_ok=True)
    corpus_path.write_text("".join(json.dumps({"text": text}) + "\n" for text in corpus.texts), encoding="utf-8")
    n_bytes = sum(len(text.encode("utf-8")) for text in corpus.texts)
    print(f"planted corpus: {len(corpus.texts):,} documents, {n_bytes / 1e6:.1f} MB", flush=True)
    pythons = {"gptjax": sys.executable, "datatrove": args.datatrove_python, "gptjax-prepare": sys.executable}
    runs: dict[str, list[dict]] = {side: [] for side in pythons}
    roots = {}
    for repeat in range(args.repeats):
        for side, python in pythons.items():
            runs[side].append(run_near_once(python, side, corpus_path, work / side))
            print(f"run {repeat + 1} {side}: {runs[side][-1]['seconds']:.2f} s", flush=True)
            if repeat == 0:
                roots[side] = near_roots(side, work / side, len(corpus.texts))
    roots[OLD_SETTINGS_SIDE] = np.array(near_duplicate_clusters(
        corpus.texts, MinHashConfig(ngram=5, num_perm=120, bands=20, rows=6, threshold=0.8)))
    scores = {side: score_clusters(corpus, side_roots) for side, side_roots in roots.items()}
    rate_rows = {side: recall_by_edit_rate(corpus, side_roots) for side, side_roots in roots.items()}
    write_near_results(args, corpus, n_bytes, runs, scores, rate_rows)
    print(Path(args.results).read_text())


NEAR_RUNS = {"gptjax": gptjax_near_run, "datatrove": datatrove_near_run, "gptjax-prepare": prepare_near_run}


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
    parser.add_argument("--mode", choices=("throughput", "near-recall"), default="throughput")
    parser.add_argument("--copies", type=int, default=100, help="near-recall: copies (and negatives) per kind")
    parser.add_argument("--repeats", type=int, default=3, help="near-recall: timed runs of each side")
    parser.add_argument("--seed", type=int, default=0, help="near-recall: seed of the planted corpus")
    parser.add_argument("--words", type=int, default=200, help="near-recall: words per web base document")
    parser.add_argument("--results", default=str(NEAR_RESULTS), help="near-recall: where to write the tables")
    parser.add_argument("--datatrove-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--near-run", choices=tuple(NEAR_RUNS), help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer-json", help=argparse.SUPPRESS)
    parser.add_argument("--minhash-shape", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.datatrove_run:
        datatrove_run(Path(args.corpus), Path(args.work), args.workers[0], Path(args.tokenizer_json),
                      tuple(int(value) for value in args.minhash_shape.split(",")))
        return
    if args.near_run:
        NEAR_RUNS[args.near_run](Path(args.corpus), Path(args.work))
        return
    args.command_line = ["python", "benchmarks/prepare.py", *sys.argv[1:]]
    if args.mode == "near-recall":
        run_near_recall(args)
        return
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
        print(f"gptjax workers={workers}: {runs[-1]['wall']:.1f} s, peak {runs[-1]['peak_rss'] / 2**20:.0f} MiB",
              flush=True)
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
            print(f"compare workers={workers}: gptjax {ours['wall']:.1f} s, datatrove {theirs['wall']:.1f} s",
                  flush=True)
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
