"""Measure gptjax.prepare.langid accuracy per language on the lingua sentences and the UDHR texts.

Writes a markdown report (default ``benchmarks/results/langid_accuracy.md``) whose first lines give
the command that produced it. Run from the repository root:

    python benchmarks/langid_accuracy.py [--data-dir PATH] [--threshold 0.5] [--out PATH]
"""
from __future__ import annotations

import argparse
import csv
import shlex
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from gptjax.prepare.langid import (  # noqa: E402
    DEFAULT_SAMPLE_CHARS,
    canonical_language,
    detect,
    language_probabilities,
    supported_languages,
)

DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "multilingual"
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "langid_accuracy.md"
LONG_DOCUMENT_SOURCE = REPO_ROOT / "tests" / "fixtures" / "data" / "langid" / "udhr_eng.txt"
LONG_DOCUMENT_COPIES = 300  # about 3.2 million characters


def long_document_seconds(repeats: int = 5) -> tuple[int, float]:
    """(characters, best seconds of `detect`) on a multi-megabyte document: the cost a bounded sample caps."""
    document = LONG_DOCUMENT_SOURCE.read_text(encoding="utf-8") * LONG_DOCUMENT_COPIES
    detect(document[:1000])  # loads the model
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        detect(document)
        timings.append(time.perf_counter() - started)
    return len(document), min(timings)


@dataclass(frozen=True)
class LanguageResult:
    """Accuracy figures of one language on one data set."""

    name: str
    expected: str
    supported: bool
    n_texts: int
    n_correct: int
    n_kept: int
    top_confusions: tuple[tuple[str, int], ...]

    @property
    def accuracy(self) -> float:
        return self.n_correct / self.n_texts if self.n_texts else 0.0

    @property
    def kept_share(self) -> float:
        return self.n_kept / self.n_texts if self.n_texts else 0.0


def evaluate_texts(name: str, expected_code: str, texts: list[str], threshold: float) -> LanguageResult:
    """Classify each text; count top-1 hits and texts whose expected-language probability reaches ``threshold``."""
    expected = canonical_language(expected_code)
    supported = expected in supported_languages()
    predictions = Counter()
    n_kept = 0
    for text in texts:
        probabilities = language_probabilities(text)
        predictions[max(probabilities, key=probabilities.__getitem__)] += 1
        if supported and probabilities.get(expected, 0.0) >= threshold:
            n_kept += 1
    confusions = tuple((code, count) for code, count in predictions.most_common() if code != expected)[:3]
    return LanguageResult(name, expected, supported, len(texts), predictions[expected], n_kept, confusions)


def lingua_results(data_dir: Path, threshold: float) -> list[LanguageResult]:
    """One result per lingua sentence file (one sentence per line, file name = ISO 639-1 code)."""
    results = []
    for path in sorted((data_dir / "lingua_sentences").glob("*.txt")):
        sentences = [line.strip() for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
        results.append(evaluate_texts(path.stem, path.stem, sentences, threshold))
    return results


def udhr_results(
    data_dir: Path, threshold: float, min_line_chars: int
) -> tuple[list[LanguageResult], list[LanguageResult], list[LanguageResult]]:
    """Per UDHR language: results on every line, on lines of at least ``min_line_chars``, on the whole text."""
    per_line, long_lines, whole = [], [], []
    with open(data_dir / "udhr" / "languages.tsv", encoding="utf-8") as table:
        for row in csv.DictReader(table, delimiter="\t"):
            code = row["bcp47"].split("-")[0]
            text = (data_dir / "udhr" / "txt" / f"{row['key']}.txt").read_text(encoding="utf-8")
            lines = [line.strip() for line in text.split("\n") if line.strip()]
            per_line.append(evaluate_texts(row["key"], code, lines, threshold))
            long_lines.append(
                evaluate_texts(row["key"], code, [line for line in lines if len(line) >= min_line_chars], threshold)
            )
            whole.append(evaluate_texts(row["key"], code, [text], threshold))
    return per_line, long_lines, whole


def summary_line(label: str, results: list[LanguageResult]) -> str:
    """Macro and micro accuracy over the languages the model supports."""
    supported = [result for result in results if result.supported]
    n_texts = sum(result.n_texts for result in supported)
    micro = sum(result.n_correct for result in supported) / n_texts
    macro = sum(result.accuracy for result in supported) / len(supported)
    kept = sum(result.n_kept for result in supported) / n_texts
    below = sum(result.accuracy < 0.9 for result in supported)
    return (
        f"| {label} | {len(supported)} of {len(results)} | {n_texts} | {macro:.4f} | {micro:.4f} | "
        f"{kept:.4f} | {below} |"
    )


def language_table(results: list[LanguageResult]) -> list[str]:
    """Markdown rows, one per language, worst accuracy first."""
    rows = [
        "| set name | expected label | texts | accuracy | kept at threshold | most frequent wrong labels |",
        "|---|---|---:|---:|---:|---|",
    ]
    for result in sorted(results, key=lambda result: (not result.supported, result.accuracy, result.name)):
        confusions = ", ".join(f"{code} {count}" for code, count in result.top_confusions) or "-"
        if result.supported:
            rows.append(
                f"| {result.name} | {result.expected} | {result.n_texts} | {result.accuracy:.3f} | "
                f"{result.kept_share:.3f} | {confusions} |"
            )
        else:
            rows.append(
                f"| {result.name} | {result.expected} (not in model) | {result.n_texts} | - | - | {confusions} |"
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--min-line-chars", type=int, default=40)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not (args.data_dir / "lingua_sentences").is_dir():
        raise SystemExit(
            f"no lingua_sentences/ under {args.data_dir}; pass --data-dir pointing at shared/data/multilingual"
        )

    started = time.perf_counter()
    lingua = lingua_results(args.data_dir, args.threshold)
    udhr_lines, udhr_long_lines, udhr_whole = udhr_results(args.data_dir, args.threshold, args.min_line_chars)
    elapsed = time.perf_counter() - started
    long_chars, long_seconds = long_document_seconds()

    command = "python benchmarks/langid_accuracy.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    report = [
        "# Language-ID accuracy (gptjax.prepare.langid, py3langid)",
        "",
        f"Command (from the repository root): `{command.strip()}`",
        "",
        f"Data: `{args.data_dir}` (lingua sentences, one per line; UDHR plain text, one title/paragraph per line). "
        f"Long texts are classified on a {DEFAULT_SAMPLE_CHARS}-character sample. "
        f"'kept at threshold' = share of texts whose probability for the expected language is >= {args.threshold}. "
        "Codes the model does not have are listed but left out of the averages. "
        f"Most UDHR lines shorter than {args.min_line_chars} characters are headings such as 'Article 12'. "
        f"Total classification time: {elapsed:.1f} s. One document of {long_chars:,} characters (the UDHR in "
        f"English, {LONG_DOCUMENT_COPIES} times) takes {1000 * long_seconds:.0f} ms (best of 5): the sample bounds "
        "the cost per document whatever its length.",
        "",
        "## Summary",
        "",
        "| data | languages in model | texts | macro accuracy | micro accuracy | kept at threshold | languages < 0.9 |",
        "|---|---|---:|---:|---:|---:|---:|",
        summary_line("lingua sentences", lingua),
        summary_line("UDHR lines", udhr_lines),
        summary_line(f"UDHR lines of >= {args.min_line_chars} chars", udhr_long_lines),
        summary_line("UDHR whole documents", udhr_whole),
        "",
        "## Lingua sentences, per language",
        "",
        *language_table(lingua),
        "",
        "## UDHR lines, per language",
        "",
        *language_table(udhr_lines),
        "",
        f"## UDHR lines of >= {args.min_line_chars} characters, per language",
        "",
        *language_table(udhr_long_lines),
        "",
        "## UDHR whole documents",
        "",
        *language_table(udhr_whole),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(report), encoding="utf-8")
    print("\n".join(report[8:15]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
