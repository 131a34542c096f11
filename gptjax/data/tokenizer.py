"""Tokenizers: char-level, sentencepiece (BPE/unigram, byte fallback) and GPT-2 byte-level BPE.

Each is a set of files (`files() -> {name: bytes}`) plus a kind, so it can be saved beside data, inside every
checkpoint and export, and rebuilt from them alone. `<|endoftext|>` is a control token placed between documents.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Iterable, Iterator, Protocol

from gptjax.config import SENTENCEPIECE_MODEL_TYPES, TOKENIZERS, Config
from gptjax.errors import GptjaxError
from gptjax.fileio import as_path, makedirs, write_bytes_atomic

KINDS = TOKENIZERS
EOT = "<|endoftext|>"
SPEC_FILE = "tokenizer.json"
SENTENCEPIECE_SEED = 0  # fixes sentencepiece's sentence sampling, so the same texts train the same model


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...

    @property
    def eot_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def files(self) -> dict[str, bytes]: ...


def fingerprint(tok: Tokenizer) -> str:
    """sha256 over the tokenizer's kind and files: equal fingerprints mean equal token ids."""
    h = hashlib.sha256(tok.kind.encode())
    for name, data in sorted(tok.files().items()):
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


class CharTokenizer:
    """One id per character seen in training (sorted, as nanoGPT), then `<|endoftext|>`."""

    kind = "char"

    def __init__(self, chars: str):
        self.chars = chars
        self._ids = {c: i for i, c in enumerate(chars)}

    @classmethod
    def train(cls, texts: Iterable[str]) -> "CharTokenizer":
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return cls("".join(sorted(seen)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    @property
    def eot_id(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError as e:
            raise GptjaxError(f"character {e.args[0]!r} is not in this char-level tokenizer's vocabulary "
                              f"({len(self.chars)} characters seen in training); remove it from the text") from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] if i < len(self.chars) else (EOT if i == self.eot_id else "") for i in ids)

    def files(self) -> dict[str, bytes]:
        return {SPEC_FILE: json.dumps({"kind": self.kind, "chars": self.chars}, ensure_ascii=False).encode()}


class SentencePieceTokenizer:
    """A sentencepiece model; `<|endoftext|>` is a control symbol, newline a piece of its own, bytes fall back."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self._eot = self._sp.piece_to_id(EOT)
        if self._sp.id_to_piece(self._eot) != EOT:
            raise GptjaxError(f"this sentencepiece model has no {EOT} piece; train it with gptjax prepare "
                              f"(or import it with gptjax import, which maps the model's EOS to {EOT})")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, model_type: str = "bpe", byte_fallback: bool = True,
              max_sentences: int = 2_000_000) -> "SentencePieceTokenizer":
        import sentencepiece as spm

        model = io.BytesIO()
        spm.set_random_generator_seed(SENTENCEPIECE_SEED)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_paragraphs(texts), model_writer=model, vocab_size=vocab_size, model_type=model_type,
                byte_fallback=byte_fallback, control_symbols=[EOT], user_defined_symbols=["\n"],
                normalization_rule_name="identity", remove_extra_whitespaces=False, character_coverage=0.9995,
                split_digits=True, allow_whitespace_only_pieces=True, max_sentence_length=1 << 16,
                input_sentence_size=max_sentences, shuffle_input_sentence=True, bos_id=-1, eos_id=-1, unk_id=0,
                pad_id=-1, minloglevel=2, num_threads=os.cpu_count() or 1,
            )
        except RuntimeError as e:
            raise GptjaxError(f"sentencepiece training failed: {e} (the vocabulary size must fit the corpus: smaller "
                              f"for a small corpus, at least the 256 byte pieces plus its characters)") from None
        return cls(model.getvalue())

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def eot_id(self) -> int:
        return self._eot

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        """Encodes many texts in one call (on `num_threads` threads; default all cores)."""
        return self._sp.encode(texts, num_threads=num_threads or os.cpu_count() or 1)

    def decode(self, ids: Iterable[int]) -> str:
        pieces, out = [], []
        for i in ids:
            if i == self._eot:
                out.append(self._sp.decode(pieces) + EOT)
                pieces = []
            else:
                pieces.append(int(i))
        return "".join(out) + self._sp.decode(pieces)

    def files(self) -> dict[str, bytes]:
        return {SPEC_FILE: json.dumps({"kind": self.kind}).encode(), "sp.model": self.model_proto}


def _paragraphs(texts: Iterable[str]) -> Iterator[str]:
    """Training 'sentences' for sentencepiece: paragraphs with their newlines, capped in length."""
    for text in texts:
        for para in text.split("\n\n"):
            for i in range(0, len(para), 4096):
                chunk = para[i:i + 4096]
                if chunk.strip():
                    yield chunk + "\n"


class Gpt2BpeAdapter:
    """GPT-2's byte-level BPE (gptjax.data.gpt2_bpe) behind the common tokenizer interface."""

    kind = "gpt2_bpe"

    def __init__(self, vocab_json: bytes, merges_txt: bytes):
        import tempfile

        from gptjax.data.gpt2_bpe import GPT2BPETokenizer

        self._files = {"vocab.json": vocab_json, "merges.txt": merges_txt}
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "vocab.json").write_bytes(vocab_json)
            Path(tmp, "merges.txt").write_bytes(merges_txt)
            self._bpe = GPT2BPETokenizer.from_files(Path(tmp, "vocab.json"), Path(tmp, "merges.txt"))

    @classmethod
    def from_dir(cls, path: str | Path) -> "Gpt2BpeAdapter":
        """From `vocab.json` + `merges.txt` (or `gpt2_vocab.json` + `gpt2_merges.txt`) in `path`."""
        path = Path(path)
        for prefix in ("", "gpt2_"):
            vocab, merges = path / f"{prefix}vocab.json", path / f"{prefix}merges.txt"
            if vocab.is_file() and merges.is_file():
                return cls(vocab.read_bytes(), merges.read_bytes())
        raise GptjaxError(f"GPT-2 tokenizer files missing in {path} (need vocab.json and merges.txt, or "
                          f"gpt2_vocab.json and gpt2_merges.txt)")

    @property
    def vocab_size(self) -> int:
        return self._bpe.vocab_size

    @property
    def eot_id(self) -> int:
        return self._bpe.eot_id

    def encode(self, text: str) -> list[int]:
        return self._bpe.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self._bpe.decode([int(i) for i in ids])

    def files(self) -> dict[str, bytes]:
        return {SPEC_FILE: json.dumps({"kind": self.kind}).encode(), **self._files}


class WithSpecialTokens:
    """A tokenizer with extra special tokens (e.g. chat role markers) appended after its vocabulary: each special
    string in a text becomes its one id (base vocab_size + i), the text between is encoded by the base tokenizer.
    Same kind and files as the base, plus the list in tokenizer.json, so it saves, fingerprints and reloads."""

    def __init__(self, base: Tokenizer, specials: tuple[str, ...]):
        if isinstance(base, WithSpecialTokens):
            specials, base = base.specials + tuple(s for s in specials if s not in base.specials), base.base
        self.base = base
        self.specials = tuple(dict.fromkeys(specials))
        self.kind = base.kind
        self._ids = {text: base.vocab_size + i for i, text in enumerate(self.specials)}
        self._split = re.compile(
            "(" + "|".join(re.escape(t) for t in sorted(self.specials, key=len, reverse=True)) + ")"
        )

    def __getattr__(self, name: str):  # the base's extras (model_proto, chars, encode_batch) stay reachable
        return getattr(self.__dict__["base"], name)

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size + len(self.specials)

    @property
    def eot_id(self) -> int:
        return self.base.eot_id

    def special_ids(self) -> dict[str, int]:
        return dict(self._ids)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for part in self._split.split(text):
            if part in self._ids:
                ids.append(self._ids[part])
            elif part:
                ids += self.base.encode(part)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        out, run = [], []
        for i in ids:
            i = int(i)
            if i >= self.base.vocab_size:
                out.append(self.base.decode(run))
                run = []
                out.append(self.specials[i - self.base.vocab_size] if i < self.vocab_size else "")
            else:
                run.append(i)
        return "".join(out) + self.base.decode(run)

    def files(self) -> dict[str, bytes]:
        files = dict(self.base.files())
        spec = json.loads(files[SPEC_FILE])
        files[SPEC_FILE] = json.dumps({**spec, "special_tokens": list(self.specials)}, ensure_ascii=False).encode()
        return files


def base_tokenizer(tok: Tokenizer) -> Tokenizer:
    """The tokenizer `tok` extends with special tokens, or `tok` itself."""
    return tok.base if isinstance(tok, WithSpecialTokens) else tok


def from_files(files: dict[str, bytes]) -> Tokenizer:
    """Rebuilds a tokenizer from its files (as saved by `save` or stored in a checkpoint)."""
    if SPEC_FILE not in files:
        raise GptjaxError(f"tokenizer files lack {SPEC_FILE}; save the tokenizer again (gptjax prepare writes one)")
    spec = json.loads(files[SPEC_FILE]) if files[SPEC_FILE].strip().startswith(b"{") else {}
    if spec.get("special_tokens"):
        plain = {**files, SPEC_FILE: json.dumps({k: v for k, v in spec.items() if k != "special_tokens"},
                                                ensure_ascii=False).encode()}
        return WithSpecialTokens(from_files(plain), tuple(spec["special_tokens"]))
    try:
        spec = json.loads(files[SPEC_FILE])
        kind = spec.get("kind")
        if kind == "char":
            return CharTokenizer(spec["chars"])
        if kind == "sentencepiece":
            return SentencePieceTokenizer(files["sp.model"])
        if kind == "gpt2_bpe":
            return Gpt2BpeAdapter(files["vocab.json"], files["merges.txt"])
    except (ValueError, KeyError, AttributeError) as e:
        raise GptjaxError(f"the tokenizer files are corrupt or incomplete ({type(e).__name__}: {e}); save the "
                          f"tokenizer again (gptjax prepare writes one)") from None
    raise GptjaxError(f"unknown tokenizer kind '{kind}' in {SPEC_FILE} (known: {', '.join(KINDS)})")


def encode_many(tok: Tokenizer, texts: list[str], num_threads: int = 1) -> list[list[int]]:
    """Token ids of each text, batched where the tokenizer can (sentencepiece) on `num_threads` threads."""
    if isinstance(tok, SentencePieceTokenizer):
        return tok.encode_batch(texts, num_threads=num_threads)
    return [tok.encode(text) for text in texts]


def save(tok: Tokenizer, directory: str | Path) -> None:
    directory = as_path(directory)  # a local dir or a gs:// workdir's tokenizer/
    makedirs(directory)
    for name, data in tok.files().items():
        write_bytes_atomic(directory / name, data)


def load(directory: str | Path) -> Tokenizer:
    directory = Path(directory)
    if not (directory / SPEC_FILE).is_file():
        raise GptjaxError(f"no tokenizer at {directory} (expected {directory / SPEC_FILE})")
    return from_files(
        {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")}
    )


def to_json_dict(tok: Tokenizer) -> dict:
    """The tokenizer as JSON-safe data, for checkpoint metadata."""
    return {name: base64.b64encode(data).decode() for name, data in tok.files().items()}


def from_json_dict(data: dict) -> Tokenizer:
    return from_files({name: base64.b64decode(b64) for name, b64 in data.items()})


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int, model_type: str = "bpe",
                    byte_fallback: bool = True) -> Tokenizer:
    """A char-level or sentencepiece (`model_type` bpe or unigram) tokenizer trained on `texts`."""
    if kind == "char":
        return CharTokenizer.train(texts)
    if kind == "sentencepiece":
        if model_type not in SENTENCEPIECE_MODEL_TYPES:
            raise GptjaxError(f"sentencepiece model type '{model_type}' is not supported (use "
                              f"{' or '.join(SENTENCEPIECE_MODEL_TYPES)})")
        return SentencePieceTokenizer.train(texts, vocab_size, model_type=model_type, byte_fallback=byte_fallback)
    raise GptjaxError(f"tokenizer '{kind}' is not trained from text; for gpt2_bpe pass its vocab.json/merges.txt dir")


def with_vocab(cfg: Config, tok_vocab: int) -> Config:
    """The config with model.vocab_size taken from the tokenizer (or checked against it)."""
    m = cfg.model
    if m.vocab_size == 0:
        return dataclasses.replace(cfg, model=dataclasses.replace(m, vocab_size=tok_vocab))
    if m.vocab_size < tok_vocab:
        raise GptjaxError(f"model.vocab_size={m.vocab_size} is smaller than the tokenizer's {tok_vocab}; "
                          f"set model.vocab_size=0 to take it from the data")
    return cfg
