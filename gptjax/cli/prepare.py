"""`gptjax prepare --input ... --out DIR`: raw text -> filtered, deduplicated token shards + tokenizer + report."""
from __future__ import annotations

import argparse
import dataclasses
import os

from gptjax import config as config_lib
from gptjax.config import DataConfig, PrepareConfig
from gptjax.errors import GptjaxError

HELP = "raw text -> filtered, deduplicated token shards + tokenizer + report"
# The command line cleans by default (a config's data.prepare defaults are raw, see PrepareConfig).
COMMAND_LINE_DEFAULTS = dataclasses.replace(PrepareConfig(), normalize=True, quality=True, dedup="near",
                                            max_doc_bytes=32 << 20)
_CLEANING_FIELDS = ("normalize", "languages", "quality", "dedup", "boilerplate")
_MB = 2**20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `gptjax prepare`."""
    defaults = COMMAND_LINE_DEFAULTS
    io_group = parser.add_argument_group("inputs and output")
    io_group.add_argument("--input", nargs="+", required=True,
                          help="files (.txt, .jsonl[.gz|.zst], .parquet), folders (recursive) or globs")
    io_group.add_argument("--out", required=True, help="new directory for the prepared data")
    io_group.add_argument("--decisions", metavar="FILE",
                          help="also write one JSON line per document: kept, or the stage and reason that dropped "
                               "it (and for a duplicate, the copy that was kept)")
    io_group.add_argument("--text-field", default=defaults.text_field, help="JSONL key / Parquet column with the text")
    io_group.add_argument("--txt-mode", default=defaults.txt_mode, choices=config_lib.TXT_MODES,
                          help=".txt files: one document per file, or one per blank-line-separated paragraph")
    io_group.add_argument("--max-doc-mb", type=float, default=defaults.max_doc_bytes / _MB,
                          help="documents (JSONL lines, whole .txt files) larger than this are dropped and counted")
    filters = parser.add_argument_group("cleaning")
    filters.add_argument("--raw", action="store_true",
                         help="tokenize the text as it is: no normalization, language or quality filter, dedup or "
                              "boilerplate removal (for a book or a curated corpus; what data.inputs does by default)")
    filters.add_argument("--no-normalize", action="store_true", help="skip UTF-8 repair / newline / NFC normalization")
    filters.add_argument("--languages", default="",
                         help="comma-separated ISO codes to keep, e.g. en or en,de (default: no language filter)")
    filters.add_argument("--lang-threshold", type=float, default=defaults.lang_threshold,
                         help="minimum probability of a kept language")
    filters.add_argument("--no-quality", action="store_true", help="skip the Gopher quality rules")
    filters.add_argument("--dedup", default=defaults.dedup, choices=config_lib.DEDUP_MODES,
                         help="near = exact, then MinHash/LSH near-duplicates")
    filters.add_argument("--jaccard", type=float, default=defaults.jaccard, help="near-duplicate Jaccard threshold")
    filters.add_argument("--num-perm", type=int, default=defaults.num_perm, help="MinHash permutations")
    filters.add_argument("--bands", type=int, default=defaults.bands, help="LSH bands (rows = num-perm // bands)")
    filters.add_argument("--ngram", type=int, default=defaults.ngram, help="word n-gram size of MinHash shingles")
    filters.add_argument("--boilerplate", default=defaults.boilerplate, choices=config_lib.BOILERPLATE_MODES,
                         help="remove lines or paragraphs repeated across documents")
    filters.add_argument("--boilerplate-max-count", type=int, default=defaults.boilerplate_max_count,
                         help="a line/paragraph seen more than this many times corpus-wide is removed")
    tok = parser.add_argument_group("tokenizer and shards")
    tok.add_argument("--tokenizer", default=DataConfig.tokenizer, choices=config_lib.TOKENIZERS)
    tok.add_argument("--vocab-size", type=int, default=4096, help="sentencepiece vocabulary size")
    tok.add_argument("--model-type", default=defaults.model_type, choices=config_lib.SENTENCEPIECE_MODEL_TYPES,
                     help="sentencepiece model type")
    tok.add_argument("--no-byte-fallback", action="store_true", help="sentencepiece: map unknown characters to <unk>")
    tok.add_argument("--sample-docs", type=int, default=defaults.sample_docs,
                     help="sentencepiece trains on about this many train documents")
    tok.add_argument("--sample-mb", type=float, default=defaults.sample_bytes / _MB,
                     help="... and at most this much text")
    tok.add_argument("--tokenizer-dir", default="",
                     help="for gpt2_bpe: directory with vocab.json and merges.txt; for hf: a Hugging Face model or "
                          "tokenizer directory (tokenizer.json, or Llama 3's tiktoken tokenizer.model); for any kind: "
                          "a prepared dir's tokenizer/ to reuse (one tokenizer for data.mixture)")
    tok.add_argument("--val-fraction", type=float, default=DataConfig.val_fraction)
    tok.add_argument("--shard-tokens", type=int, default=defaults.shard_tokens, help="tokens per shard (at most)")
    tok.add_argument("--tfds", action="store_true", help="also write a TFDS array_record copy under OUT/tfds")
    run_group = parser.add_argument_group("execution")
    run_group.add_argument("--runner", default="local", choices=("local", "beam"),
                           help="local: a process pool on this machine; beam: Apache Beam pipelines, with Beam's "
                                "pipeline options after `--` (default: the DirectRunner with --workers processes), "
                                "e.g. -- --runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp")
    run_group.add_argument("pipeline_options", nargs="*", metavar="-- BEAM_OPTION",
                           help="Apache Beam pipeline options (with --runner beam), after `--`")
    run_group.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    run_group.add_argument("--chunk-mb", type=float, default=defaults.chunk_bytes / _MB,
                           help="text per work chunk (the unit of parallelism and of resume)")
    run_group.add_argument("--quiet", action="store_true", help="no progress bars or report table")


def _bytes(megabytes: float) -> int:
    return max(int(megabytes * _MB), 1)


def config_from_args(args: argparse.Namespace) -> DataConfig:
    """The data config the parsed `gptjax prepare` flags describe (`--raw` overrides the cleaning flags)."""
    prepare = PrepareConfig(
        text_field=args.text_field, txt_mode=args.txt_mode, max_doc_bytes=_bytes(args.max_doc_mb),
        normalize=not args.no_normalize,
        languages=tuple(code.strip() for code in args.languages.split(",") if code.strip()),
        lang_threshold=args.lang_threshold, quality=not args.no_quality, dedup=args.dedup, jaccard=args.jaccard,
        num_perm=args.num_perm, bands=args.bands, ngram=args.ngram, boilerplate=args.boilerplate,
        boilerplate_max_count=args.boilerplate_max_count, model_type=args.model_type,
        byte_fallback=not args.no_byte_fallback, sample_docs=args.sample_docs, sample_bytes=_bytes(args.sample_mb),
        chunk_bytes=_bytes(args.chunk_mb), shard_tokens=args.shard_tokens, workers=args.workers, tfds=args.tfds)
    if args.raw:
        raw = PrepareConfig()
        prepare = dataclasses.replace(prepare, **{name: getattr(raw, name) for name in _CLEANING_FIELDS})
    return DataConfig(dataset="", inputs=tuple(args.input), tokenizer=args.tokenizer, tokenizer_dir=args.tokenizer_dir,
                      vocab_size=args.vocab_size, val_fraction=args.val_fraction, prepare=prepare)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    """Runs the pipeline, prints the report table and a one-line summary; returns 0."""
    from gptjax.fileio import check_destination
    from gptjax.prepare.pipeline import REPORT, read_report, run_pipeline

    data = config_from_args(args)
    check_destination(args.decisions, "--decisions")
    check_destination(args.out, "--out", directory=True)
    runner = None
    if args.runner == "beam":
        from gptjax.prepare.pipeline.beam import BeamRunner, pipeline_options

        runner = BeamRunner(pipeline_options(args.pipeline_options, args.workers))
    elif args.pipeline_options:
        raise GptjaxError(f"unexpected arguments {' '.join(args.pipeline_options)}: Beam pipeline options after `--` "
                          f"need --runner beam")
    manifest = run_pipeline(data.inputs, args.out, data, show_progress=not args.quiet, decisions=args.decisions,
                            runner=runner)
    splits = manifest["splits"]
    if not args.quiet:
        print("\n".join(read_report(args.out)["table"]))
    decisions = f"; decisions in {args.decisions}" if args.decisions else ""
    tokenizer = manifest["tokenizer"]
    print(f"prepared {args.out}: tokenizer {tokenizer['kind']} (vocab {tokenizer['vocab_size']}), "
          f"train {splits['train']['n_tokens']:,} tokens in {len(splits['train']['shards'])} shards, "
          f"val {splits['val']['n_tokens']:,} tokens; report in {str(args.out).rstrip('/')}/{REPORT}{decisions}")
    return 0
