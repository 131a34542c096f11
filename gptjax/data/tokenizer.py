"""Tokenizers: char-level, sentencepiece (BPE/unigram, byte fallback), GPT-2 byte-level BPE, and any Hugging Face
`tokenizers` tokenizer.json (`hf`: Llama 3, Mistral, Qwen, Gemma, ...).

Each is a set of files (`files() -> {name: bytes}`) plus a kind, so it can be saved beside data, inside every
checkpoint and export, and rebuilt from them alone. An end-of-text token (`eot_id`: `<|endoftext|>`, or an hf
family's EOS) is placed between documents; no BOS is added inside documents (`prompt_ids` adds it to a prompt
where the family's own tokenizer would).
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
from gptjax.data import tiktoken_bpe
from gptjax.errors import GptjaxError
from gptjax.fileio import as_path, makedirs, write_bytes_atomic

KINDS = TOKENIZERS
EOT = "<|endoftext|>"
SPEC_FILE = "tokenizer.json"
SENTENCEPIECE_SEED = 0  # fixes sentencepiece's sentence sampling, so the same texts train the same model


class Tokenizer(Protocol):
    kind: str
    bos_id: int | None  # the family's BOS token (hf kinds that have one), else None
    add_bos: bool  # whether the family's own tokenizer puts BOS at the start of a sequence

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
    bos_id: int | None = None
    add_bos = False

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
    bos_id: int | None = None
    add_bos = False

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
    bos_id: int | None = None
    add_bos = False

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


HF_FILE = "hf_tokenizer.json"  # an hf tokenizer's Hugging Face tokenizer.json, kept byte for byte
HF_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "config.json")
TIKTOKEN_FILE = "tokenizer.model"  # Llama 3's original release: tiktoken ranks, no tokenizer.json
EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")  # tried in order when no file names the EOS


def special_token_text(value: object) -> str | None:
    """A special token as tokenizer_config.json / special_tokens_map.json write it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def first_token_id(value: object) -> int | None:
    """A token id as config.json / generation_config.json write it: an int or a list of ints (the first counts)."""
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def chat_template(tok_config: dict, directory: Path) -> str | None:
    """The chat template of tokenizer_config.json (the `default` one of a list), else chat_template.jinja's."""
    template = tok_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default", next(iter(named.values()), None))
    if isinstance(template, str):
        return template
    jinja = directory / "chat_template.jinja"
    return jinja.read_text(encoding="utf-8") if jinja.is_file() else None


def _hf_backend(tokenizer_json: bytes, where: str):
    """The `tokenizers.Tokenizer` of a tokenizer.json's bytes."""
    try:
        from tokenizers import Tokenizer as HfBackend
    except ImportError:
        raise GptjaxError("the hf tokenizer needs the `tokenizers` package: pip install 'gptjax[hf]'") from None
    try:
        return HfBackend.from_str(tokenizer_json.decode("utf-8"))
    except Exception as e:  # tokenizers raises plain Exceptions for malformed files
        raise GptjaxError(f"{where} is not a Hugging Face tokenizers tokenizer.json ({e}); save it again with "
                          f"tokenizer.save_pretrained") from None


class HfTokenizer:
    """A Hugging Face `tokenizers` tokenizer.json (the format Llama 3, Mistral, Qwen, Gemma ship), encoding as
    transformers' `encode(text, add_special_tokens=False)` and decoding as its `decode(ids)`.

    Special (added) tokens in a text are recognised as HF does. The end-of-text id is the family's EOS. `bos_id` is
    its BOS and `add_bos` whether its tokenizer.json's post-processor puts it before a sequence (documents get
    none; `prompt_ids` adds it to prompts). `chat_template` is the family's Jinja template, kept for callers."""

    kind = "hf"

    def __init__(self, tokenizer_json: bytes, eos_token: str, bos_token: str | None = None,
                 chat_template: str | None = None, clean_up_tokenization_spaces: bool = False,
                 where: str = HF_FILE):
        self.tokenizer_json = tokenizer_json
        self._tok = _hf_backend(tokenizer_json, where)
        _check_ids(self._tok, tokenizer_json, where)
        self.eos_token, self.chat_template = eos_token, chat_template
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self._eot = self._token_id(eos_token, "eos_token", where)
        prefix = self._post_processor_prefix()
        if bos_token is None and len(prefix) == 1:
            bos_token = self._tok.id_to_token(prefix[0])
        self.bos_token = bos_token
        self.bos_id = None if bos_token is None else self._token_id(bos_token, "bos_token", where)
        self.add_bos = self.bos_id is not None and prefix == [self.bos_id]

    @classmethod
    def from_dir(cls, directory: str | Path, model_config: dict | None = None) -> "HfTokenizer":
        """From an HF model or tokenizer directory: tokenizer.json, plus (if present) tokenizer_config.json,
        special_tokens_map.json, generation_config.json and config.json (or `model_config`) for its special tokens;
        without a tokenizer.json, a tiktoken tokenizer.model (`from_tiktoken_dir`)."""
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            if (directory / TIKTOKEN_FILE).is_file():
                return cls.from_tiktoken_dir(directory)
            raise GptjaxError(f"no Hugging Face tokenizer in {directory} (expected {path}, or a tiktoken "
                              f"{TIKTOKEN_FILE} as Llama 3's original release ships); point --tokenizer-dir at a "
                              f"directory holding the model's tokenizer.json")
        side = {name: _json_object(directory / name) for name in HF_SIDE_FILES}
        if model_config is not None:
            side["config.json"] = dict(model_config)
        tok_config, special_map = side["tokenizer_config.json"], side["special_tokens_map.json"]
        tokenizer_json = path.read_bytes()
        backend = _hf_backend(tokenizer_json, str(path))
        eos = _family_token("eos", tok_config, special_map, side, backend)
        if eos is None:
            raise GptjaxError(f"{directory} names no EOS token (no eos_token in tokenizer_config.json, no "
                              f"eos_token_id in generation_config.json or config.json, no token "
                              f"{' / '.join(EOS_NAMES)}); gptjax needs one to end documents: set eos_token in "
                              f"{directory / 'tokenizer_config.json'}")
        return cls(tokenizer_json, eos, _family_token("bos", tok_config, special_map, side, backend),
                   chat_template(tok_config, directory), tok_config.get("clean_up_tokenization_spaces") is True,
                   str(path))

    @classmethod
    def from_tiktoken_dir(cls, directory: str | Path, ranks: dict[bytes, int] | None = None) -> "HfTokenizer":
        """From a tiktoken BPE tokenizer.model (its `ranks`, read from the file when not given), converted to a
        tokenizer.json in memory (`tiktoken_bpe.tokenizer_json`). Its special tokens follow the ranks:
        tokenizer_config.json's added_tokens_decoder (id -> content) where it has one, else Llama 3's 256; EOS and
        BOS are its eos_token and bos_token, else `<|end_of_text|>` and `<|begin_of_text|>` (put before every
        sequence, as Llama 3 does)."""
        directory = Path(directory)
        where = str(directory / TIKTOKEN_FILE)
        if ranks is None:
            ranks = tiktoken_bpe.read_ranks((directory / TIKTOKEN_FILE).read_bytes())
            if ranks is None:
                raise GptjaxError(f"{where} is not a tiktoken BPE file (one `BASE64_TOKEN RANK` line per token); point "
                                  f"--tokenizer-dir at a directory holding the model's tokenizer.json, or Llama 3's "
                                  f"original tiktoken {TIKTOKEN_FILE}")
        config_path = directory / "tokenizer_config.json"
        tok_config = _json_object(config_path)
        specials = _tiktoken_special_tokens(tok_config.get("added_tokens_decoder"), len(ranks), config_path, where)
        eos = special_token_text(tok_config.get("eos_token")) or tiktoken_bpe.LLAMA3_EOS
        bos = (special_token_text(tok_config.get("bos_token")) if "bos_token" in tok_config
               else tiktoken_bpe.LLAMA3_BOS)
        return cls(tiktoken_bpe.tokenizer_json(ranks, specials, bos, where=where), eos, bos,
                   chat_template(tok_config, directory), tok_config.get("clean_up_tokenization_spaces") is True, where)

    @classmethod
    def from_files(cls, spec: dict, files: dict[str, bytes]) -> "HfTokenizer":
        """From its saved files: the HF tokenizer.json (as HF_FILE) and the spec `files()` writes."""
        return cls(files[HF_FILE], spec["eos_token"], spec.get("bos_token"), spec.get("chat_template"),
                   bool(spec.get("clean_up_tokenization_spaces")))

    def _token_id(self, token: str, role: str, where: str) -> int:
        token_id = self._tok.token_to_id(token)
        if token_id is None:
            raise GptjaxError(f"{where}: the {role} {token!r} is not a token of this tokenizer; fix {role} in "
                              f"tokenizer_config.json")
        return token_id

    def _post_processor_prefix(self) -> list[int]:
        """The ids the post-processor puts before a sequence (e.g. Llama's BOS), found by encoding with and without
        special tokens."""
        plain = self._tok.encode("a", add_special_tokens=False).ids
        full = self._tok.encode("a", add_special_tokens=True).ids
        for start in range(len(full) - len(plain) + 1):
            if full[start:start + len(plain)] == plain:
                return full[:start]
        return []

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eot_id(self) -> int:
        return self._eot

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """`encode(text)` and each token's (start, end) character span in `text`."""
        encoding = self._tok.encode(text, add_special_tokens=False)
        return encoding.ids, [tuple(span) for span in encoding.offsets]

    def decode(self, ids: Iterable[int]) -> str:
        text = self._tok.decode([int(i) for i in ids], skip_special_tokens=False)
        if self.clean_up_tokenization_spaces and type(self._tok.model).__name__ != "BPE":  # as transformers 5
            for spaced, tight in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                                  (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(spaced, tight)
        return text

    def files(self) -> dict[str, bytes]:
        spec = {"kind": self.kind, "eos_token": self.eos_token, "bos_token": self.bos_token,
                "chat_template": self.chat_template,
                "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces}
        return {SPEC_FILE: json.dumps(spec, ensure_ascii=False, sort_keys=True).encode(), HF_FILE: self.tokenizer_json}


def _check_ids(backend, tokenizer_json: bytes, where: str) -> None:
    """Every id below the vocabulary size must be a token (so vocab_size bounds every id the tokenizer gives), and
    every added token must keep the id its file gives it (`tokenizers` renumbers added tokens past a gap)."""
    ids = backend.get_vocab(with_added_tokens=True).values()
    size = backend.get_vocab_size(with_added_tokens=True)
    if len(ids) != size or max(ids, default=-1) != size - 1:
        raise GptjaxError(f"{where}: the token ids are not 0..{size - 1} ({len(ids)} tokens, highest id "
                          f"{max(ids, default=-1)}); gptjax needs every id below the vocabulary size to be a token")
    for added in json.loads(tokenizer_json).get("added_tokens") or ():
        loaded = backend.token_to_id(added.get("content"))
        if loaded != added.get("id"):
            raise GptjaxError(f"{where}: the added token {added.get('content')!r} has id {added.get('id')} in the file "
                              f"but {loaded} when loaded (its ids leave a gap); fix the ids of added_tokens")


def _tiktoken_special_tokens(added_tokens_decoder: object, n_ranks: int, config_path: Path,
                             where: str) -> list[str]:
    """The special tokens after a tiktoken file's `n_ranks` ranks, in id order: tokenizer_config.json's
    added_tokens_decoder where it has one (its ids must run on from n_ranks), else Llama 3's."""
    if not added_tokens_decoder:
        return list(tiktoken_bpe.LLAMA3_SPECIAL_TOKENS)
    try:
        by_id = sorted((int(index), entry["content"] if isinstance(entry, dict) else str(entry))
                       for index, entry in dict(added_tokens_decoder).items())
    except (TypeError, ValueError, KeyError) as e:
        raise GptjaxError(f"{config_path}: added_tokens_decoder is not a map of id -> token ({e}); fix it") from None
    if [index for index, _ in by_id] != list(range(n_ranks, n_ranks + len(by_id))):
        raise GptjaxError(f"{config_path}: the ids of added_tokens_decoder are not {n_ranks}.. in a row after the "
                          f"{n_ranks} tiktoken ranks of {where}; fix them")
    return [content for _, content in by_id]


def _json_object(path: Path) -> dict:
    """A JSON object file's content; {} when it is absent."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_bytes())
    except ValueError as e:
        raise GptjaxError(f"{path} is not valid JSON ({e}); fix it or save the tokenizer again") from None
    if not isinstance(data, dict):
        raise GptjaxError(f"{path} holds a JSON {type(data).__name__}, not an object; fix it or save it again")
    return data


def _family_token(role: str, tok_config: dict, special_map: dict, side: dict[str, dict], backend) -> str | None:
    """The family's `role` ('eos' or 'bos') token: tokenizer_config.json's, else special_tokens_map.json's, else
    the token at generation_config.json's (then config.json's) id; an EOS falls back to a conventional name. A BOS
    set to null (Qwen) is none, whatever id the model configs name."""
    for source in (tok_config, special_map):
        token = special_token_text(source.get(f"{role}_token"))
        if token is not None or (role == "bos" and f"{role}_token" in source):
            return token
    for name in ("generation_config.json", "config.json"):
        token_id = first_token_id(side[name].get(f"{role}_token_id"))
        if token_id is not None and backend.id_to_token(token_id) is not None:
            return backend.id_to_token(token_id)
    if role == "eos":
        return next((name for name in EOS_NAMES if backend.token_to_id(name) is not None), None)
    return None


def is_hf_tokenizer_json(path: Path) -> bool:
    """Whether `path` is a Hugging Face tokenizer.json (a `model` section, no gptjax `kind`)."""
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_bytes())
    except ValueError:
        return False
    return isinstance(data, dict) and "model" in data and "kind" not in data


def source_digest(directory: str | Path) -> str:
    """sha256 over the tokenizer files in `directory` an hf tokenizer is read from (HF's, a tiktoken file, or
    gptjax's saved form), so a changed file changes every key computed from it."""
    h = hashlib.sha256()
    for name in sorted((SPEC_FILE, HF_FILE, TIKTOKEN_FILE, "chat_template.jinja") + HF_SIDE_FILES):
        path = Path(directory) / name
        if path.is_file():
            h.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


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


def bos_prefix(tok: Tokenizer) -> list[int]:
    """[BOS] where the family's own tokenizer puts BOS before a sequence (hf kinds with `add_bos`), else []."""
    bos_id = getattr(tok, "bos_id", None)
    return [bos_id] if getattr(tok, "add_bos", False) and bos_id is not None else []


def sequence_start_id(tok: Tokenizer) -> int:
    """The id a finetuning sequence starts with: the family's BOS where its own tokenizer adds one (as HF's
    `tokenizer(text)` does for the texts trl trains on), else end-of-text (a document's start in pretraining)."""
    return (bos_prefix(tok) or [tok.eot_id])[0]


def prompt_ids(tok: Tokenizer, text: str) -> list[int]:
    """The ids a prompt is fed as: BOS + its ids where the family's own tokenizer adds BOS, else its ids (an empty
    prompt: end-of-text alone, the start of a document)."""
    return (bos_prefix(tok) + tok.encode(text)) or [tok.eot_id]


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
        if kind == "hf":
            return HfTokenizer.from_files(spec, files)
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
    """The tokenizer `save` wrote into `directory`; a Hugging Face tokenizer directory (its tokenizer.json and
    side files) loads as an hf tokenizer."""
    directory = Path(directory)
    if not (directory / SPEC_FILE).is_file():
        raise GptjaxError(f"no tokenizer at {directory} (expected {directory / SPEC_FILE})")
    if is_hf_tokenizer_json(directory / SPEC_FILE):
        return HfTokenizer.from_dir(directory)
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
    raise GptjaxError(f"tokenizer '{kind}' is not trained from text; pass --tokenizer-dir (gpt2_bpe: a dir with "
                      f"vocab.json and merges.txt; hf: a dir with a Hugging Face tokenizer.json)")


def with_vocab(cfg: Config, tok_vocab: int) -> Config:
    """The config with model.vocab_size taken from the tokenizer (or checked against it)."""
    m = cfg.model
    if m.vocab_size == 0:
        return dataclasses.replace(cfg, model=dataclasses.replace(m, vocab_size=tok_vocab))
    if m.vocab_size < tok_vocab:
        raise GptjaxError(f"model.vocab_size={m.vocab_size} is smaller than the tokenizer's {tok_vocab}; "
                          f"set model.vocab_size=0 to take it from the data")
    return cfg
