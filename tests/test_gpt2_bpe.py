"""GPT2BPETokenizer is id-exact with HF tokenizers (and tiktoken) built from the same local GPT-2 files."""
from __future__ import annotations

import hashlib
import json
import pickle
import random
import shutil
from pathlib import Path

import pytest

from gptjax.data.gpt2_bpe import (
    EOT_TOKEN,
    GPT2_PRETOKENIZE_PATTERN,
    GPT2BPETokenizer,
    bytes_to_unicode,
    unicode_to_bytes,
)
from gptjax.errors import GptjaxError

FIXTURES = Path(__file__).parent / "fixtures" / "gpt2"
VOCAB = FIXTURES / "gpt2_vocab.json"
MERGES = FIXTURES / "gpt2_merges.txt"
SAMPLE_FILES = ["address.txt", "german.txt", "tinystories_sample.txt", "corpus.en"]
GPT2_FINGERPRINT = "28b89eacf9dddf43ae0cb2380d2708f4d7183fedb35dc8bc28003f34f2bc4428"

TRICKY = [
    "",
    " ",
    "  ",
    "   leading spaces",
    "trailing spaces   ",
    "multiple   spaces  in    between",
    " " * 50,
    "\n",
    "\n\n\n",
    "line one\nline two\n",
    "windows\r\nline\r\n\r\n",
    "\r",
    "\ttab\tseparated\t\tvalues\t",
    " \t \n mixed \n\t whitespace \x0b\x0c",
    "x\n\n\n   y",
    "I'm you're he's it'll we've they'd don't",
    "I'M YOU'RE HE'S IT'LL WE'VE THEY'D DON'T",
    "'s't're've'm'll'd",
    "'S'T'RE'VE'M'LL'D",
    "rock 'n' roll, ''quoted'' and ' lone",
    "1234567890",
    "3.14159 2,000,000 1e-10 0x1F 007",
    "phone: +1 (555) 010-9999",
    "١٢٣ ½ ² Ⅻ",
    "!!!???...,,,;;;",
    "---===***///",
    "a...b <<>>{{}}[[]] ~`@#$%^&",
    "😀😃😄 🎉🎉",
    "👍🏽 family: 👨\u200d👩\u200d👧\u200d👦 ❤️",
    "日本語のテキスト、中文文本。한국어 텍스트",
    "Café naïve résumé Ελληνικά русский עברית العربية",
    "e\u0301 a\u0308 \u0915\u093f Z\u0351\u0352\u0353",
    "\u0301\u0301 leading combining marks",
    "\u00a0nbsp\u00a0 \u3000ideographic\u2028separator\u2029",
    "zero\u200bwidth\u200djoiner \ufeffbom",
    "\x00\x01\x1f\x7f\x85 controls",
    "\uffff\ufdd0\U0003fffe noncharacters",
    "\u0378\U000e0001\ue000\U0010ffff unassigned, tag, private use, max",
    "\U0001d400\U0001d401 math bold",
    "Ġ Ċ ĠĊ text already in the byte alphabet ÿ\u0100\u0143",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "a" * 300,
    "<|endoftext|>",
    "a<|endoftext|>b",
    "<|endoftext|><|endoftext|>",
    " <|endoftext|>\n",
    "<|endoftext",
    "<|ENDOFTEXT|> <|endoftext |>",
]


def read_text(name: str) -> str:
    """A fixture sample's text, newlines kept exactly as stored."""
    return (FIXTURES / name).read_text(encoding="utf-8", errors="strict")


SAMPLES = {name: read_text(name) for name in SAMPLE_FILES}
ALL_TEXTS = [*SAMPLES.values(), *TRICKY]
ALL_IDS = [*SAMPLE_FILES, *(repr(t)[:40] for t in TRICKY)]


def random_texts(count: int, seed: int) -> list[str]:
    """Short strings mixing GPT-2's pre-token classes (letters, digits, spaces, punctuation, contractions, emoji)."""
    atoms = list(
        " \t\n\r\x0b\x0c\x85\xa0\u1680\u2000\u2028\u3000\u200b\ufeff'sStTrReEvVmMlLdD0123456789²½٣"
        "!?.,;:-_<>|()\"`~aé\u0301日本한🎉👍🏽\u200d❤\ufe0f\U00010000\U0010ffff\uffff\x00\x7f"
    ) + ["'s", "'ll", "'VE", EOT_TOKEN, "  ", "\r\n", "   \n", "hello", " world"]
    rng = random.Random(seed)
    return ["".join(rng.choice(atoms) for _ in range(rng.randint(0, 30))) for _ in range(count)]


FUZZ = random_texts(2000, seed=1234)


@pytest.fixture(scope="module")
def tok() -> GPT2BPETokenizer:
    """Our tokenizer over the fixture tables."""
    return GPT2BPETokenizer.from_files(VOCAB, MERGES)


def build_hf(vocab: Path, merges: Path, with_eot: bool):
    """HF tokenizers' GPT-2 pipeline (byte-level pre-tokenizer + BPE + byte-level decoder) over local files."""
    tokenizers = pytest.importorskip("tokenizers", reason="HF tokenizers is the reference; pip install tokenizers")
    hf = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(vocab), str(merges)))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = tokenizers.decoders.ByteLevel()
    if with_eot:
        hf.add_special_tokens([EOT_TOKEN])
    return hf


@pytest.fixture(scope="module")
def hf_plain():
    """HF reference with no special tokens: a literal <|endoftext|> is ordinary text."""
    return build_hf(VOCAB, MERGES, with_eot=False)


@pytest.fixture(scope="module")
def hf_special():
    """HF reference with <|endoftext|> added as a special token."""
    return build_hf(VOCAB, MERGES, with_eot=True)


@pytest.fixture(scope="module")
def tiktoken_enc():
    """tiktoken Encoding built offline from the fixture vocab (mergeable ranks = ids) and GPT-2's pattern."""
    tiktoken = pytest.importorskip("tiktoken", reason="tiktoken not installed; the HF comparison still runs")
    vocab = json.loads(VOCAB.read_text(encoding="utf-8"))
    ranks = {unicode_to_bytes(token): i for token, i in vocab.items() if token != EOT_TOKEN}
    return tiktoken.Encoding(
        name="gpt2_local_fixture",
        pat_str=GPT2_PRETOKENIZE_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOT_TOKEN: vocab[EOT_TOKEN]},
        explicit_n_vocab=len(vocab),
    )


def test_properties(tok: GPT2BPETokenizer) -> None:
    assert tok.eot_id == 50256
    assert tok.vocab_size == 50257


def test_vocab_uses_standard_byte_alphabet_in_openai_order() -> None:
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert (table[ord(" ")], table[ord("\n")], table[ord("\t")], table[ord("!")]) == ("Ġ", "Ċ", "ĉ", "!")
    vocab = json.loads(VOCAB.read_text(encoding="utf-8"))
    first_256 = sorted((i, token) for token, i in vocab.items() if i < 256)
    openai_order = [*(b for b in table if table[b] == chr(b)), *(b for b in table if table[b] != chr(b))]
    assert [token for _, token in first_256] == [table[b] for b in openai_order]


def test_byte_alphabet_equals_hf_byte_level_alphabet() -> None:
    tokenizers = pytest.importorskip("tokenizers", reason="HF tokenizers not installed")
    assert set(tokenizers.pre_tokenizers.ByteLevel.alphabet()) == set(bytes_to_unicode().values())


def test_known_gpt2_ids(tok: GPT2BPETokenizer) -> None:
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" Hello world") == [18435, 995]
    assert tok.encode("") == []


@pytest.mark.parametrize("text", ALL_TEXTS, ids=ALL_IDS)
def test_encode_matches_hf(tok: GPT2BPETokenizer, hf_plain, text: str) -> None:
    assert tok.encode(text) == hf_plain.encode(text).ids


@pytest.mark.parametrize("text", ALL_TEXTS, ids=ALL_IDS)
def test_encode_with_special_matches_hf(tok: GPT2BPETokenizer, hf_special, text: str) -> None:
    assert tok.encode_with_special(text) == hf_special.encode(text).ids


@pytest.mark.parametrize("text", ALL_TEXTS, ids=ALL_IDS)
def test_matches_tiktoken(tok: GPT2BPETokenizer, tiktoken_enc, text: str) -> None:
    assert tok.encode(text) == tiktoken_enc.encode_ordinary(text)
    assert tok.encode_with_special(text) == tiktoken_enc.encode(text, allowed_special="all")


def test_fuzz_matches_hf(tok: GPT2BPETokenizer, hf_plain, hf_special) -> None:
    ours = tok.encode_batch(FUZZ)
    assert ours == [e.ids for e in hf_plain.encode_batch(FUZZ)]
    assert [tok.encode_with_special(t) for t in FUZZ] == [e.ids for e in hf_special.encode_batch(FUZZ)]
    assert [tok.decode(ids) for ids in ours] == FUZZ


@pytest.mark.parametrize("text", ALL_TEXTS, ids=ALL_IDS)
def test_decode_round_trip(tok: GPT2BPETokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode_with_special(text)) == text


def test_literal_eot_is_plain_text_in_encode(tok: GPT2BPETokenizer) -> None:
    assert tok.encode(EOT_TOKEN) == [27, 91, 437, 1659, 5239, 91, 29]
    assert tok.encode_with_special(EOT_TOKEN) == [tok.eot_id]
    story = SAMPLES["tinystories_sample.txt"]
    assert tok.eot_id not in tok.encode(story)
    assert tok.encode_with_special(story).count(tok.eot_id) == story.count(EOT_TOKEN) == 5


def test_pickle_round_trip(tok: GPT2BPETokenizer) -> None:
    tok.encode("warm the cache")
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.fingerprint() == tok.fingerprint()
    assert clone.encode_with_special(SAMPLES["tinystories_sample.txt"]) == tok.encode_with_special(
        SAMPLES["tinystories_sample.txt"]
    )


def test_encode_batch_equals_encode(tok: GPT2BPETokenizer) -> None:
    texts = [*SAMPLES.values(), *TRICKY]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch([]) == []


def single_byte_ids(data: bytes) -> list[int]:
    """Ids of the base tokens spelling ``data`` one byte at a time (no merges)."""
    vocab = json.loads(VOCAB.read_text(encoding="utf-8"))
    return [vocab[bytes_to_unicode()[b]] for b in data]


def test_decode_partial_utf8_replaces_like_hf(tok: GPT2BPETokenizer, hf_plain) -> None:
    text = "🎉 é 日本 ok"
    raw = text.encode("utf-8")
    byte_ids = single_byte_ids(raw)
    for cut in range(len(byte_ids) + 1):
        expected = raw[:cut].decode("utf-8", errors="replace")
        assert tok.decode(byte_ids[:cut]) == expected == hf_plain.decode(byte_ids[:cut])
        assert tok.decode_bytes(byte_ids[:cut]) == raw[:cut]
    invalid = single_byte_ids(b"a\x9f\xff b")
    assert tok.decode(invalid) == "a\ufffd\ufffd b" == hf_plain.decode(invalid)
    ids = tok.encode(text)
    for cut in range(len(ids) + 1):
        assert tok.decode(ids[:cut]) == hf_plain.decode(ids[:cut])


def test_decode_rejects_out_of_range_ids(tok: GPT2BPETokenizer) -> None:
    with pytest.raises(ValueError):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError):
        tok.decode([-1])
    assert tok.decode([]) == ""


def test_lone_surrogate_is_rejected(tok: GPT2BPETokenizer) -> None:
    with pytest.raises(UnicodeEncodeError):
        tok.encode("bad \ud800 surrogate")


def test_save_writes_input_format_and_load_round_trips(tok: GPT2BPETokenizer, tmp_path: Path) -> None:
    saved = tok.save(tmp_path / "gpt2")
    assert (saved / "vocab.json").read_bytes() == VOCAB.read_bytes()
    assert (saved / "merges.txt").read_bytes() == MERGES.read_bytes()
    loaded = GPT2BPETokenizer.load(saved)
    assert loaded.fingerprint() == tok.fingerprint()
    assert loaded.encode_batch(ALL_TEXTS) == tok.encode_batch(ALL_TEXTS)
    assert (loaded.eot_id, loaded.vocab_size) == (tok.eot_id, tok.vocab_size)


def test_saved_files_load_in_hf(tok: GPT2BPETokenizer, tmp_path: Path) -> None:
    saved = tok.save(tmp_path / "gpt2")
    hf = build_hf(saved / "vocab.json", saved / "merges.txt", with_eot=False)
    assert [e.ids for e in hf.encode_batch(ALL_TEXTS)] == tok.encode_batch(ALL_TEXTS)


def test_saved_files_load_in_transformers_gpt2_tokenizer_fast(tok: GPT2BPETokenizer, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers", reason="transformers not installed")
    saved = tok.save(tmp_path / "gpt2")
    fast = transformers.GPT2TokenizerFast.from_pretrained(str(saved))
    assert len(fast) == tok.vocab_size
    for text in [*SAMPLES.values(), *TRICKY]:
        assert fast.encode(text) == tok.encode_with_special(text)


def test_fingerprint_is_stable_and_canonical(tok: GPT2BPETokenizer, tmp_path: Path) -> None:
    framed = b"".join(len(blob).to_bytes(8, "big") + blob for blob in (VOCAB.read_bytes(), MERGES.read_bytes()))
    assert tok.fingerprint() == hashlib.sha256(framed).hexdigest() == GPT2_FINGERPRINT
    assert GPT2BPETokenizer.from_files(VOCAB, MERGES).fingerprint() == GPT2_FINGERPRINT
    vocab = json.loads(VOCAB.read_text(encoding="utf-8"))
    shuffled = dict(sorted(vocab.items(), key=lambda item: -item[1]))
    (tmp_path / "vocab.json").write_text(json.dumps(shuffled, ensure_ascii=False, indent=1), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + MERGES.read_text(encoding="utf-8"), encoding="utf-8")
    relaid = GPT2BPETokenizer.load(tmp_path)
    assert relaid.fingerprint() == GPT2_FINGERPRINT
    assert relaid.encode(SAMPLES["german.txt"]) == tok.encode(SAMPLES["german.txt"])


def test_fingerprint_changes_with_merges(tmp_path: Path) -> None:
    shutil.copy(VOCAB, tmp_path / "vocab.json")
    merges = MERGES.read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "merges.txt").write_text("".join(merges[:-1]), encoding="utf-8")
    assert GPT2BPETokenizer.load(tmp_path).fingerprint() != GPT2_FINGERPRINT


def tiny_vocab() -> dict[str, int]:
    """The 256 byte tokens in byte order plus <|endoftext|>: the smallest valid byte-level vocab."""
    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    vocab[EOT_TOKEN] = 256
    return vocab


def test_merge_free_vocab_encodes_bytes() -> None:
    tiny = GPT2BPETokenizer(tiny_vocab(), [])
    assert tiny.encode("hé!") == list("hé!".encode())
    assert tiny.decode(tiny.encode("hé!")) == "hé!"
    merged = GPT2BPETokenizer({**tiny_vocab(), "Ġh": 257}, [("Ġ", "h")])
    assert merged.encode(" h h") == [257, 257]


def test_rejects_vocab_with_another_byte_convention() -> None:
    vocab = tiny_vocab()
    del vocab["Ġ"]
    vocab["\u2581"] = 32
    with pytest.raises(GptjaxError, match="bytes_to_unicode"):
        GPT2BPETokenizer(vocab, [])


def test_rejects_malformed_files(tmp_path: Path) -> None:
    (tmp_path / "vocab.json").write_text(json.dumps(tiny_vocab()), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("a b c\n", encoding="utf-8")
    with pytest.raises(GptjaxError, match="line 1"):
        GPT2BPETokenizer.load(tmp_path)
    (tmp_path / "merges.txt").write_text("a bb\n", encoding="utf-8")
    with pytest.raises(GptjaxError, match="not in the vocab"):
        GPT2BPETokenizer.load(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 2}), encoding="utf-8")
    with pytest.raises(GptjaxError, match="ids must be"):
        GPT2BPETokenizer.load(tmp_path)
    with pytest.raises(GptjaxError, match="cannot read"):
        GPT2BPETokenizer.load(tmp_path / "missing")
