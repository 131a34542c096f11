"""Finetuning examples: records tokenized into fixed-width rows and served as resumable, deterministic batches.

Every sequence starts with <|endoftext|> (as a pretraining document does), or with BOS for an hf tokenizer whose
family adds one (`tokenizers.sequence_start_id`); an hf_chat sequence is exactly what the family's chat template
renders (its own BOS, if any, included; gptjax.finetune.hf_chat). Rows have one width per run (the longest
example, rounded up to a multiple of 16, at most model.block_size), so one shape compiles. Batch k of a run holds
global rows k·B .. k·B+B-1 of the epoch stream: epoch e is the examples in the order `shuffled_order(n, seed, e)`
(with `finetune.pack`, SFT records are packed into rows in that order, segment ids keeping them apart). A batch is a
pure function of (seed, step), so a restored grain iterator continues exactly.

Batches per objective (B rows, W = width):
  classify: tokens [B, W], lengths [B], labels [B], example_weights [B]
  sft:      tokens [B, W+1], loss_weights [B, W] (+ segment_ids, positions [B, W+1] when packed)
  dpo:      chosen / rejected [B, W+1], chosen_weights / rejected_weights [B, W], example_weights [B]
            (+ ref_chosen / ref_rejected [B]: the reference's summed log-probs, when precomputed)
Evaluation batches cover a split in file order, the last one filled with zero-weight rows.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from gptjax.config import Config
from gptjax.data import tokenizer as tokenizers
from gptjax.data.packing import shuffled_order
from gptjax.errors import GptjaxError, note
from gptjax.finetune import hf_chat
from gptjax.finetune import records as records_lib
from gptjax.finetune.templates import EOT, Piece, conversation, prompt_conversation, prompt_pieces, record_pieces

ROW_MULTIPLE = 16


def encode_pieces(
    encode: Callable[[str], list[int]], eot_id: int, pieces: Sequence[Piece], start_id: int | None = None
) -> tuple[list[int], list[bool]]:
    """Token ids of the start token (`start_id`, default <|endoftext|>) + the pieces (each encoded on its own) and,
    per token, whether it is a target."""
    ids, is_target = [eot_id if start_id is None else start_id], [False]
    for piece in pieces:
        piece_ids = [eot_id] if piece.text is EOT else encode(piece.text)
        ids += piece_ids
        is_target += [piece.target] * len(piece_ids)
    return ids, is_target


class RecordEncoder:
    """A finetuning template applied with the run's tokenizer: a record's whole sequence with per-token target flags
    (`sequence`) and the prompt its last response is generated after (`prompt`). hf_chat needs an hf tokenizer with a
    chat template; any other tokenizer is refused here, before a record is read."""

    def __init__(self, template: str, tokenizer: tokenizers.Tokenizer):
        self.template, self.tokenizer = template, tokenizer
        self.chat = hf_chat.chat_tokenizer(tokenizer) if template == "hf_chat" else None
        self.start_id = tokenizers.sequence_start_id(tokenizer)

    def sequence(self, record: dict, response: str | None = None) -> tuple[list[int], list[bool]]:
        """The ids of `record` (its response replaced by `response` when given) and whether each is a target."""
        if self.chat is not None:
            return hf_chat.conversation_tokens(self.chat, conversation(record, response))
        pieces = record_pieces(record, self.template, response)
        return encode_pieces(self.tokenizer.encode, self.tokenizer.eot_id, pieces, self.start_id)

    def prompt(self, record: dict) -> list[int]:
        if self.chat is not None:
            return hf_chat.prompt_tokens(self.chat, prompt_conversation(record))
        return encode_pieces(self.tokenizer.encode, self.tokenizer.eot_id, prompt_pieces(record, self.template),
                             self.start_id)[0]

    def stop_id(self) -> int:
        """The token a generated response ends with: the chat template's end-of-turn marker, else <|endoftext|>."""
        return hf_chat.turn_end_id(self.chat) if self.chat is not None else self.tokenizer.eot_id

    def shown_prompt(self, prompt_ids: list[int]) -> str:
        """A prompt's text as samples.jsonl shows it: without the start token `prompt` puts first (hf_chat's
        rendering is shown whole, BOS included where the template writes it)."""
        return self.tokenizer.decode(prompt_ids if self.chat is not None else prompt_ids[1:])


@dataclasses.dataclass(frozen=True)
class TokenSequence:
    """One tokenized sequence: ids and the weight of predicting each next token (1 on targets)."""

    ids: np.ndarray  # int32 [n]
    weights: np.ndarray  # float32 [n - 1]: weights[t] counts the prediction of ids[t + 1]


def _sequence(ids: list[int], is_target: list[bool]) -> TokenSequence:
    return TokenSequence(np.asarray(ids, np.int32), np.asarray(is_target[1:], np.float32))


def row_width(longest: int, limit: int) -> int:
    return min(limit, ROW_MULTIPLE * math.ceil(longest / ROW_MULTIPLE))


@dataclasses.dataclass
class Fitted:
    """What fitting a split's sequences into the block did: how many were cut or dropped."""

    truncated: int = 0
    skipped: int = 0

    def report(self, split: str, total: int, limit: int, policy: str) -> None:
        if self.truncated or self.skipped:
            what = []
            if self.truncated:
                what.append(f"{self.truncated} truncated")
            if self.skipped:
                what.append(f"{self.skipped} skipped" + (" (nothing to learn left after truncation)"
                                                         if policy == "truncate" else ""))
            note(f"finetune: {self.truncated + self.skipped} of {total} {split} records are longer than "
                 f"{limit} tokens: {', '.join(what)} (finetune.too_long={policy})")


def fit_sequence(seq: TokenSequence, limit: int, policy: str, fitted: Fitted) -> TokenSequence | None:
    """`seq` cut to `limit` tokens (policy truncate) or dropped (skip); None also when no target survives."""
    if len(seq.ids) <= limit:
        return seq if seq.weights.any() else None
    if policy == "skip":
        fitted.skipped += 1
        return None
    cut = TokenSequence(seq.ids[:limit], seq.weights[: limit - 1])
    if not cut.weights.any():
        fitted.skipped += 1
        return None
    fitted.truncated += 1
    return cut


def _pad(rows: Sequence[np.ndarray], width: int, dtype) -> np.ndarray:
    out = np.zeros((len(rows), width), dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


# ---- example tables: one split, one objective -------------------------------------------------------------------


@dataclasses.dataclass
class Table:
    """A split's examples as padded arrays (rows aligned), plus what the batches need to know."""

    arrays: dict[str, np.ndarray]
    n: int

    def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[indices] for k, v in self.arrays.items()}


def classification_table(records: Sequence[dict], labels: Sequence[str], encode, eot_id: int, block_size: int,
                         policy: str, split: str) -> tuple[Table, list[list[int]]]:
    """tokens / lengths / labels of labelled texts (over-long texts keep their first block_size tokens, or are
    skipped); also the kept ids, for choosing the run's row width."""
    label_id = {name: i for i, name in enumerate(labels)}
    kept_ids, kept_labels, fitted = [], [], Fitted()
    for record in records:
        ids = [eot_id] + encode(record["text"])
        if len(ids) > block_size:
            if policy == "skip":
                fitted.skipped += 1
                continue
            fitted.truncated += 1
            ids = ids[:block_size]
        kept_ids.append(ids)
        kept_labels.append(label_id[record["label"]])
    fitted.report(split, len(records), block_size, policy)
    return Table({"labels": np.asarray(kept_labels, np.int32)}, len(kept_ids)), kept_ids


def sft_sequences(records: Sequence[dict], encoder: RecordEncoder, limit: int, policy: str,
                  split: str) -> list[TokenSequence]:
    fitted, kept = Fitted(), []
    for record in records:
        seq = fit_sequence(_sequence(*encoder.sequence(record)), limit, policy, fitted)
        if seq is not None:
            kept.append(seq)
    fitted.report(split, len(records), limit, policy)
    return kept


def preference_pairs(records: Sequence[dict], encoder: RecordEncoder, limit: int, policy: str,
                     split: str) -> list[tuple[TokenSequence, TokenSequence]]:
    """(chosen, rejected) sequences per record, both after the same prompt; a pair is kept only if both fit."""
    fitted, kept = Fitted(), []
    for record in records:
        pair = [fit_sequence(_sequence(*encoder.sequence(record, response=record[field])), limit, policy, fitted)
                for field in ("chosen", "rejected")]
        if pair[0] is not None and pair[1] is not None:
            kept.append((pair[0], pair[1]))
    fitted.report(split, len(records), limit, policy)
    return kept


def padded_sequences(seqs: Sequence[TokenSequence], width: int, prefix: str = "") -> dict[str, np.ndarray]:
    """ids [N, width + 1] and weights [N, width] of sequences, zero-padded."""
    name = prefix or "tokens"
    return {name: _pad([s.ids for s in seqs], width + 1, np.int32),
            (f"{prefix}_weights" if prefix else "loss_weights"): _pad([s.weights for s in seqs], width, np.float32)}


def packed_rows(seqs: Sequence[TokenSequence], order: np.ndarray, width: int) -> dict[str, np.ndarray]:
    """Sequences in `order` packed greedily into rows of width + 1 tokens: segment ids 1, 2, ... per sequence (0 =
    padding), positions restarting at 0, weights zero across sequence boundaries."""
    rows: list[list[TokenSequence]] = [[]]
    used = 0
    for i in order:
        seq = seqs[i]
        if used + len(seq.ids) > width + 1 and rows[-1]:
            rows.append([])
            used = 0
        rows[-1].append(seq)
        used += len(seq.ids)
    tokens = np.zeros((len(rows), width + 1), np.int32)
    segments = np.zeros_like(tokens)
    positions = np.zeros_like(tokens)
    weights = np.zeros((len(rows), width), np.float32)
    for r, row in enumerate(rows):
        start = 0
        for s, seq in enumerate(row, 1):
            n = len(seq.ids)
            tokens[r, start:start + n] = seq.ids
            segments[r, start:start + n] = s
            positions[r, start:start + n] = np.arange(n)
            weights[r, start:start + n - 1] = seq.weights
            start += n
    return {"tokens": tokens, "loss_weights": weights, "segment_ids": segments, "positions": positions}


# ---- the run's data ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FinetuneData:
    """A finetuning run's examples per split and how to batch them."""

    objective: str
    splits: dict[str, Table]
    width: int
    labels: tuple[str, ...]
    path: Path
    packed_sft: list | None = None  # train sequences, when finetune.pack
    bytes_per_token: float = 0.0
    prompts: dict[str, list[list[int]]] = dataclasses.field(default_factory=dict)  # held-out prompts, for samples
    references: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def epoch_rows(self, seed: int, epoch: int) -> dict[str, np.ndarray]:
        """Every training row of epoch `epoch`, in order."""
        order = shuffled_order(self.splits["train"].n, seed, epoch)
        if self.packed_sft is not None:
            return packed_rows(self.packed_sft, order, self.width)
        return self.splits["train"].take(order)

    def eval_batches(self, split: str, batch_size: int) -> list[dict[str, np.ndarray]]:
        """Batches covering `split` in order; the last one padded with zero-weight rows."""
        table = self.splits[split]
        batches = []
        for start in range(0, table.n, batch_size):
            indices = np.arange(start, min(start + batch_size, table.n))
            batch = table.take(np.concatenate([indices, np.zeros(batch_size - len(indices), np.int64)]))
            for key in ("example_weights", "loss_weights", "chosen_weights", "rejected_weights"):
                if key in batch:
                    batch[key] = batch[key].copy()
                    batch[key][len(indices):] = 0
            batches.append(batch)
        return batches

    def attach(self, split: str, extra: dict[str, np.ndarray]) -> None:
        """Adds per-example arrays to a split (e.g. the DPO reference's log-probs)."""
        self.splits[split].arrays.update(extra)


class EpochStream:
    """Global training row r -> (epoch, row within it), epochs built on demand (two kept)."""

    def __init__(self, data: FinetuneData, seed: int):
        self.data = data
        self.seed = seed
        self.counts: list[int] = []
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": {}}

    def _epoch(self, epoch: int) -> dict[str, np.ndarray]:
        if epoch not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            self._cache[epoch] = self.data.epoch_rows(self.seed, epoch)
        return self._cache[epoch]

    def _locate(self, row: int) -> tuple[int, int]:
        while not self.counts or sum(self.counts) <= row:
            epoch = len(self.counts)
            self.counts.append(len(next(iter(self._epoch(epoch).values()))))
        starts = np.concatenate([[0], np.cumsum(self.counts)])
        epoch = int(np.searchsorted(starts, row, side="right") - 1)
        return epoch, row - int(starts[epoch])

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        located = [self._locate(int(r)) for r in indices]
        parts = [{k: v[i: i + 1] for k, v in self._epoch(e).items()} for e, i in located]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class FinetuneStepBatches:
    """grain map function: step -> this process's rows of that step's global batch."""

    def __init__(self, stream: EpochStream, global_batch: int, process_index: int, process_count: int):
        self.stream = stream
        self.global_batch = global_batch
        self.local_batch = global_batch // process_count
        self.first_row = process_index * self.local_batch

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        rows = np.arange(self.first_row, self.first_row + self.local_batch, dtype=np.int64)
        return self.stream.rows(np.int64(step) * self.global_batch + rows)


def _check_tokens_fit(ids: Sequence[int], vocab: int, path: Path) -> None:
    if ids and max(ids) >= vocab:
        raise GptjaxError(f"{path}: the tokenizer produced id {max(ids)} beyond the model's vocab {vocab}")


def load_finetune_data(cfg: Config, tokenizer) -> FinetuneData:
    """The records of `finetune.task` tokenized for `train.objective`, every split checked and tabled."""
    f, objective = cfg.finetune, cfg.train.objective
    expected_tasks = {"classify": ("sms_spam", "classification"), "sft": ("instruction",), "dpo": ("preference",)}
    if f.task not in expected_tasks[objective]:
        raise GptjaxError(f"train.objective='{objective}' reads finetune.task "
                          f"{' or '.join(expected_tasks[objective])}, "
                          f"not '{f.task}'")
    path = records_lib.records_path(f.task, f.data)
    splits = records_lib.split_records(f.task, path)
    encode, eot = tokenizer.encode, tokenizer.eot_id
    encoder = RecordEncoder(f.template, tokenizer) if objective in ("sft", "dpo") else None
    block = cfg.model.block_size
    if objective == "classify":
        labels = records_lib.label_names([r for s in splits.values() for r in s], f.labels, path)
        if len(labels) != cfg.model.num_classes:
            raise GptjaxError(f"{path} has {len(labels)} classes ({', '.join(labels)}) but model.num_classes="
                              f"{cfg.model.num_classes}; set model.num_classes={len(labels)}")
        tables, ids = {}, {}
        for split, records in splits.items():
            tables[split], ids[split] = classification_table(records, labels, encode, eot, block, f.too_long, split)
        width = row_width(max(len(i) for split_ids in ids.values() for i in split_ids), block)
        for split, table in tables.items():
            _check_tokens_fit([t for i in ids[split] for t in i], cfg.model.vocab_size, path)
            table.arrays.update(tokens=_pad(ids[split], width, np.int32),
                                lengths=np.asarray([len(i) for i in ids[split]], np.int32),
                                example_weights=np.ones(table.n, np.float32))
        data = FinetuneData(objective, tables, width, labels, path)
    elif objective == "sft":
        seqs = {split: sft_sequences(records, encoder, block + 1, f.too_long, split)
                for split, records in splits.items()}
        width = row_width(max(len(s.ids) - 1 for split_seqs in seqs.values() for s in split_seqs), block)
        tables = {split: Table(padded_sequences(s, width), len(s)) for split, s in seqs.items()}
        data = FinetuneData(objective, tables, width, (), path, packed_sft=seqs["train"] if f.pack else None)
        data.bytes_per_token = _target_bytes_per_token(seqs["val"], tokenizer)
    else:
        pairs = {split: preference_pairs(records, encoder, block + 1, f.too_long, split)
                 for split, records in splits.items()}
        width = row_width(max(len(s.ids) - 1 for split_pairs in pairs.values() for p in split_pairs for s in p), block)
        tables = {}
        for split, split_pairs in pairs.items():
            arrays = {**padded_sequences([p[0] for p in split_pairs], width, "chosen"),
                      **padded_sequences([p[1] for p in split_pairs], width, "rejected"),
                      "example_weights": np.ones(len(split_pairs), np.float32)}
            tables[split] = Table(arrays, len(split_pairs))
        data = FinetuneData(objective, tables, width, (), path)
    empty = [split for split, table in data.splits.items() if table.n == 0]
    if empty:
        raise GptjaxError(f"{path}: no {empty[0]} record fits model.block_size={block} (finetune.too_long="
                          f"{f.too_long}); raise the block size or use shorter records")
    if objective in ("sft", "dpo"):
        held_out = splits["test"][: f.samples]
        data.prompts["test"] = [encoder.prompt(r) for r in held_out]
        data.references["test"] = [r.get("output") or r.get("chosen") or _last_assistant(r) for r in held_out]
    return data


def _last_assistant(record: dict) -> str:
    return [m["content"] for m in record.get("messages", []) if m["role"] == "assistant"][-1]


def _target_bytes_per_token(seqs: Sequence[TokenSequence], tokenizer) -> float:
    """UTF-8 bytes per target token over `seqs` (the bits-per-byte denominator of SFT's response loss)."""
    n_bytes = n_tokens = 0
    for seq in seqs:
        targets = seq.ids[1:][seq.weights > 0]
        n_bytes += len(tokenizer.decode([int(t) for t in targets if t != tokenizer.eot_id]).encode("utf-8"))
        n_tokens += len(targets)
    return n_bytes / max(n_tokens, 1)


def example_batch(objective: str, batch: int, width: int, packed: bool = False) -> dict[str, np.ndarray]:
    """An all-zeros batch of `objective`'s layout, for shapes (ahead-of-time lowering)."""
    if objective == "classify":
        return {"tokens": np.zeros((batch, width), np.int32), "lengths": np.ones(batch, np.int32),
                "labels": np.zeros(batch, np.int32), "example_weights": np.ones(batch, np.float32)}
    if objective == "dpo":
        seq = {"tokens": np.zeros((batch, width + 1), np.int32), "loss_weights": np.ones((batch, width), np.float32)}
        return {"chosen": seq["tokens"], "chosen_weights": seq["loss_weights"], "rejected": seq["tokens"],
                "rejected_weights": seq["loss_weights"], "example_weights": np.ones(batch, np.float32)}
    out = {"tokens": np.zeros((batch, width + 1), np.int32), "loss_weights": np.ones((batch, width), np.float32)}
    if packed:
        out.update(segment_ids=np.ones((batch, width + 1), np.int32), positions=np.zeros((batch, width + 1), np.int32))
    return out
