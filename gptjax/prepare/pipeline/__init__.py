"""`gptjax prepare`: files -> read -> normalize -> language -> quality -> dedup -> boilerplate -> split ->
tokenizer -> tokenize -> shards, resumable, with a report.

Every stage is a pure function over a chunk of documents (gptjax.prepare.stages) or over per-document keys
(gptjax.prepare.dedup), run with the settings `gptjax.prepare.settings` checks and keys; this package only moves their
inputs and outputs through a work directory beside the output
(`.<out>.work/`); a `PhaseRunner` decides where each phase's work runs. Modules:

- `runner`: the `PhaseRunner` interface and `LocalRunner` (per-chunk tasks on an `Executor`, corpus-wide work in
  this process); `beam`: `BeamRunner`, every phase as Apache Beam pipelines, with the same output byte for byte;
- `executor`: the `Executor` interface (`map`, `shutdown`) and `LocalExecutor`, the process pool;
- `chunk_files`: the work directory's files (cleaned chunks, token parts, dedup arrays, done markers);
- phases, in order: `clean`, `corpus_dedup`, `tokenizer`, `tokenize`, `shards` (`survivors` reads what dedup
  kept), passing the frozen results of `results`;
- `decisions`: the per-document decisions file; `run`: `run_pipeline`, which orders it all.

Each chunk result is written atomically with a done marker last, so a killed run (the process or one worker)
resumes from the finished chunks when run again with the same settings and inputs. The output directory appears,
by one rename, only when it is complete: token shards with document indexes, the tokenizer, `report.json` and
`manifest.json` (plus a TFDS array_record copy with `data.prepare.tfds`).

Memory stays bounded by the chunk size and a few arrays of fixed size per document (keys, band hashes, lengths),
never by the corpus's bytes.
"""
from gptjax.prepare.pipeline.executor import Executor, LocalExecutor, WorkerDied
from gptjax.prepare.pipeline.run import FORMAT_VERSION, REPORT, read_report, run_pipeline, work_dir_for
from gptjax.prepare.pipeline.tokenize import FAULT_KILL_AFTER_PARTS, FAULT_KILL_WORKER_AT_PART

__all__ = ["FAULT_KILL_AFTER_PARTS", "FAULT_KILL_WORKER_AT_PART", "FORMAT_VERSION", "REPORT", "Executor",
           "LocalExecutor", "WorkerDied", "read_report", "run_pipeline", "work_dir_for"]
