"""The hf tokenizer kind: any Hugging Face tokenizer.json, encoding and decoding exactly as transformers does,
saved and reloaded, prepared and trained on, generated with, exported to and imported from HF directories, and
one clear error line for each bad input.

Three tokenizer.json files are trained here with `tokenizers` (nothing is downloaded), shaped as the families ship
them: Llama-3-like (byte-level BPE, Llama 3's split pattern, BOS added by the post-processor), Qwen-like (byte-level,
no BOS) and Mistral-like (sentencepiece-style BPE: ▁ for spaces, byte fallback, <s> / </s>)."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

import gptjax  # noqa: E402
from gptjax import cli, export  # noqa: E402
from gptjax.api import LM  # noqa: E402
from gptjax.config import Config, DataConfig, ModelConfig, TrainConfig  # noqa: E402
from gptjax.data import tokenizer as tokenizers  # noqa: E402
from gptjax.errors import GptjaxError  # noqa: E402
from gptjax.interop import hf  # noqa: E402
from gptjax.prepare import resolve, settings  # noqa: E402

TEXT_FILE = Path(__file__).parent / "fixtures" / "hf_tokenizer" / "multilingual.txt"
TEXT = TEXT_FILE.read_text(encoding="utf-8")
LINES = TEXT.splitlines()
EDGE_TEXTS = ("", " ", "  leading and trailing  \n\n", "tabs\tand\r\nnewlines\n", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🙂☃ 👩‍👩‍👧",
              "<|im_start|>user\nhi<|im_end|>", "</s><s> <unk>", "<|end_of_text|><|begin_of_text|>x", "a  .  b ,c !")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


# ---------------------------------------------------------------- fixtures: tokenizer.json files built locally


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def byte_level_dir(path: Path, specials: list[str], bos: str | None, tok_config: dict) -> Path:
    """A byte-level BPE tokenizer.json (Llama 3's pre-tokenizer) trained on the fixture text; `bos`, if given, is
    put before every sequence by the post-processor, as Llama 3's tokenizer.json does."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(LINES, trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    byte_level = processors.ByteLevel(trim_offsets=False)
    if bos is None:
        tok.post_processor = byte_level
    else:
        tok.post_processor = processors.Sequence([byte_level, processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, tok.token_to_id(bos))])])
    path.mkdir(parents=True)
    tok.save(str(path / "tokenizer.json"))
    write_json(path / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast", **tok_config})
    return path


def metaspace_dir(path: Path) -> Path:
    """A sentencepiece-style BPE tokenizer.json as Mistral / Llama 2 ship it: ▁ marks spaces (one prepended), <s>
    </s> <unk> first, then the 256 byte pieces <0x00>..<0xFF> for byte fallback (the alphabet is cut short so rare
    characters fall back), <s> added by the post-processor."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.train_from_iterator(LINES, trainers.BpeTrainer(vocab_size=900, special_tokens=["<unk>", "<s>", "</s>"],
                                                       limit_alphabet=200, show_progress=False))
    data = json.loads(tok.to_str())
    order = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    order += [t for t, _ in sorted(data["model"]["vocab"].items(), key=lambda item: item[1]) if t not in order]
    data["model"]["vocab"] = {token: index for index, token in enumerate(order)}
    for added in data["added_tokens"]:
        added["id"] = order.index(added["content"])
    data["pre_tokenizer"] = None
    data["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    bos = {"SpecialToken": {"id": "<s>", "type_id": 0}}
    data["post_processor"] = {
        "type": "TemplateProcessing", "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, bos, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    path.mkdir(parents=True)
    write_json(path / "tokenizer.json", data)
    write_json(path / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                                                "eos_token": "</s>", "unk_token": "<unk>",
                                                "clean_up_tokenization_spaces": False, "model_max_length": 32768})
    return path


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_tokenizers")
    return {
        "llama3": byte_level_dir(root / "llama3", ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>",
                                                   "<|im_end|>"], "<|begin_of_text|>",
                                 {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
                                  "model_max_length": 131072, "clean_up_tokenization_spaces": True,
                                  "chat_template": CHAT_TEMPLATE}),
        "qwen": byte_level_dir(root / "qwen", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None,
                               {"bos_token": None, "eos_token": "<|endoftext|>", "chat_template": CHAT_TEMPLATE}),
        "mistral": metaspace_dir(root / "mistral"),
    }


def random_params(m: ModelConfig) -> dict:
    """Random float32 params of the right tree for `m`, without compiling anything."""
    rng = np.random.default_rng(0)
    return export.unflatten_params({name: 0.1 * rng.standard_normal(shape).astype(np.float32)
                                    for name, shape in export.expected_param_shapes(m).items()})


def transformers_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def assert_one_line_error(call, *fragments: str) -> str:
    with pytest.raises(GptjaxError) as failure:
        call()
    message = str(failure.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---------------------------------------------------------------- encoding, decoding, special tokens


@pytest.mark.parametrize("family", ["llama3", "qwen", "mistral"])
def test_encode_and_decode_equal_transformers(families, family):
    """encode == transformers' encode(text, add_special_tokens=False) and decode == its decode(ids), line by line
    over 32 languages, the whole text and edge cases; a prompt gets BOS exactly where transformers' tokenizer(text)
    puts it; vocab_size counts the added tokens."""
    tok = tokenizers.load(families[family])
    theirs = transformers_tokenizer(families[family])
    assert tok.kind == "hf" and tok.vocab_size == len(theirs)
    for text in LINES + [TEXT, *EDGE_TEXTS]:
        ids = tok.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False), text
        assert tok.decode(ids) == theirs.decode(ids), text
        if text:
            assert tokenizers.prompt_ids(tok, text) == theirs(text)["input_ids"], text


def test_family_special_tokens(families):
    """EOS is the end-of-text id, BOS is known (and added to prompts only where the family adds it), special tokens
    in text are single ids kept by decode, and the chat template is kept."""
    llama3, qwen, mistral = (tokenizers.load(families[name]) for name in ("llama3", "qwen", "mistral"))
    ids = llama3.encode("<|im_start|>user")
    assert ids[0] == llama3._tok.token_to_id("<|im_start|>") and llama3.decode(ids) == "<|im_start|>user"
    assert (llama3.eos_token, llama3.bos_token, llama3.add_bos) == ("<|end_of_text|>", "<|begin_of_text|>", True)
    assert llama3.eot_id == llama3._tok.token_to_id("<|end_of_text|>")
    assert llama3.chat_template == CHAT_TEMPLATE
    assert tokenizers.prompt_ids(llama3, "") == [llama3.bos_id]
    assert (qwen.eos_token, qwen.bos_id, qwen.add_bos) == ("<|endoftext|>", None, False)
    assert tokenizers.HfTokenizer.from_dir(families["qwen"], {"bos_token_id": qwen.eot_id}).bos_id is None
    assert tokenizers.prompt_ids(qwen, "") == [qwen.eot_id]
    assert tokenizers.prompt_ids(qwen, "hi") == qwen.encode("hi")
    assert (mistral.eot_id, mistral.bos_id, mistral.add_bos) == (2, 1, True)
    assert any(3 <= i < 259 for i in mistral.encode(TEXT))  # rare characters fell back to byte pieces
    char = tokenizers.CharTokenizer("abc")  # the other kinds have no BOS and are fed as before
    assert (char.bos_id, char.add_bos, tokenizers.prompt_ids(char, "")) == (None, False, [char.eot_id])


def test_finetuning_sequences_start_with_bos_where_the_family_adds_it(families):
    """An SFT example starts with BOS (as trl's tokenizer(text) gives it) for Llama-3-like families, with the
    end-of-text id otherwise (every other kind, as before); it ends with the family's EOS."""
    from gptjax.finetune import batches

    record = {"instruction": "Say hello in German.", "input": "", "output": "Hallo!"}
    for family, start in (("llama3", "bos_id"), ("qwen", "eot_id")):
        tok = tokenizers.load(families[family])
        seq, = batches.sft_sequences([record], batches.RecordEncoder("alpaca", tok), 512, "skip", "train")
        assert (seq.ids[0], seq.ids[-1]) == (getattr(tok, start), tok.eot_id)
    char = tokenizers.CharTokenizer("abc")
    assert tokenizers.sequence_start_id(char) == char.eot_id


def test_eos_is_found_where_the_family_names_it(families, tmp_path):
    """eos_token of tokenizer_config.json, else eos_token_id of generation_config.json / config.json, else a token
    with a conventional name; none at all is one error line."""
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(families["llama3"] / "tokenizer.json", plain)
    assert tokenizers.load(plain).eos_token == "<|end_of_text|>"  # by name
    im_end = tokenizers.load(plain)._tok.token_to_id("<|im_end|>")
    write_json(plain / "generation_config.json", {"eos_token_id": [im_end, 1]})
    assert tokenizers.load(plain).eot_id == im_end
    assert tokenizers.HfTokenizer.from_dir(plain, {"eos_token_id": 1}).eot_id == im_end  # generation_config first
    (plain / "generation_config.json").unlink()
    assert tokenizers.HfTokenizer.from_dir(plain, {"eos_token_id": im_end}).eot_id == im_end
    nameless = byte_level_dir(tmp_path / "nameless", ["<|im_start|>"], None, {})
    assert_one_line_error(lambda: tokenizers.load(nameless), "names no EOS token", "set eos_token in")
    write_json(nameless / "tokenizer_config.json", {"eos_token": "<|missing|>"})
    assert_one_line_error(lambda: tokenizers.load(nameless), "eos_token '<|missing|>' is not a token")


def test_saves_and_reloads_with_the_hf_file_verbatim(families, tmp_path):
    """Saved as gptjax's tokenizer.json spec + the HF file byte for byte; reloads (from disk and from checkpoint
    metadata) to the same fingerprint and encodings; another tokenizer.json is another fingerprint and digest."""
    tok = tokenizers.load(families["llama3"])
    tokenizers.save(tok, tmp_path / "saved")
    original = (families["llama3"] / "tokenizer.json").read_bytes()
    assert (tmp_path / "saved" / tokenizers.HF_FILE).read_bytes() == original
    assert json.loads((tmp_path / "saved" / tokenizers.SPEC_FILE).read_text())["kind"] == "hf"
    for again in (tokenizers.load(tmp_path / "saved"), tokenizers.from_json_dict(tokenizers.to_json_dict(tok))):
        assert tokenizers.fingerprint(again) == tokenizers.fingerprint(tok)
        assert (again.encode(TEXT), again.eot_id, again.bos_id, again.add_bos, again.chat_template) == (
            tok.encode(TEXT), tok.eot_id, tok.bos_id, tok.add_bos, tok.chat_template)
    other = tokenizers.load(families["qwen"])
    assert tokenizers.fingerprint(other) != tokenizers.fingerprint(tok)
    assert tokenizers.source_digest(families["qwen"]) != tokenizers.source_digest(families["llama3"])


def test_bad_tokenizer_dirs_are_one_line_errors(families, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(lambda: tokenizers.HfTokenizer.from_dir(empty), "no Hugging Face tokenizer in",
                          "tokenizer.json")
    assert_one_line_error(lambda: settings.check(DataConfig(dataset="", tokenizer="hf")),
                          "the hf tokenizer needs data.tokenizer_dir")
    assert_one_line_error(lambda: settings.check(DataConfig(dataset="", tokenizer="hf", tokenizer_dir=str(empty))),
                          "holds no tokenizer", "Hugging Face model's directory")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text('{"model": {"type": "nothing"}}')
    assert_one_line_error(lambda: tokenizers.load(broken), "is not a Hugging Face tokenizers tokenizer.json")
    assert_one_line_error(lambda: tokenizers.train_tokenizer("hf", ["x"], 10), "not trained from text",
                          "--tokenizer-dir")


# ---------------------------------------------------------------- prepare, train, generate


@pytest.fixture(scope="module")
def trained(families, cache_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(workdir, data dir): the fixture text prepared by `gptjax prepare --tokenizer hf` with the Llama-3-like
    tokenizer, and a tiny GPT-2-family model trained 3 steps on it (compiling into the session's cache)."""
    from gptjax.train.loop import train

    root = tmp_path_factory.mktemp("hf_trained")
    data_dir = root / "data"
    assert cli.main(["prepare", "--input", str(TEXT_FILE), "--out", str(data_dir), "--raw", "--workers", "1",
                     "--quiet", "--val-fraction", "0.2", "--tokenizer", "hf",
                     "--tokenizer-dir", str(families["llama3"])]) == 0
    cfg = Config(name="hf-tokenizer", model=ModelConfig(vocab_size=0, block_size=16, n_layer=1, n_head=2, d_model=32),
                 data=DataConfig(dataset="", path=str(data_dir), tokenizer="hf"),
                 train=TrainConfig(batch_size=4, steps=3, lr=3e-3, warmup_steps=1, eval_every=3, eval_batches=1,
                                   log_every=1, checkpoint_every=3, tensorboard=False))
    train(cfg, root / "run", show_progress=False)
    return root / "run", data_dir


def test_prepare_and_train_with_an_hf_tokenizer(trained, families):
    workdir, data_dir = trained
    manifest = json.loads((data_dir / "manifest.json").read_text())
    tok = tokenizers.load(families["llama3"])
    assert manifest["tokenizer"]["kind"] == "hf" and manifest["tokenizer"]["vocab_size"] == tok.vocab_size
    assert manifest["tokenizer"]["eot_id"] == tok.eot_id
    assert manifest["tokenizer"]["fingerprint"] == tokenizers.fingerprint(tokenizers.load(data_dir / "tokenizer"))
    assert json.loads((workdir / "config.json").read_text())["model"]["vocab_size"] >= tok.vocab_size


def test_generation_feeds_bos_first(trained, families, monkeypatch):
    lm = gptjax.load(trained[0])
    assert lm.tokenizer.kind == "hf"
    seen = []
    generate_ids = LM.generate_ids
    monkeypatch.setattr(LM, "generate_ids", lambda self, prompts, *a, **k: seen.extend(prompts) or
                        generate_ids(self, prompts, *a, **k))
    texts = lm.generate(["Hallo Welt", ""], max_new_tokens=4, temperature=0.0)
    assert len(texts) == 2 and all(isinstance(text, str) for text in texts)
    bos = lm.tokenizer.bos_id
    assert seen == [[bos] + lm.tokenizer.encode("Hallo Welt"), [bos]]


def test_data_cache_key_follows_the_tokenizer_files(families, tmp_path, monkeypatch):
    """A config naming raw files is prepared into a cache keyed by the tokenizer files, not only their directory."""
    monkeypatch.setattr(resolve, "run_pipeline", lambda inputs, out_dir, data: None)
    tok_dir = tmp_path / "tok"
    shutil.copytree(families["llama3"], tok_dir)
    data = DataConfig(dataset="", inputs=(str(TEXT_FILE),), tokenizer="hf", tokenizer_dir=str(tok_dir),
                      cache_dir=str(tmp_path / "cache"))
    first = resolve.resolve_data(data)
    first_key = settings.settings_key(data)
    write_json(tok_dir / "tokenizer_config.json", {"eos_token": "<|im_end|>"})
    assert resolve.resolve_data(data) != first
    assert settings.settings_key(data) != first_key


# ---------------------------------------------------------------- Hugging Face export and import


def test_export_loads_in_transformers_and_imports_back(trained, families, tmp_path):
    out = tmp_path / "hf"
    assert cli.main(["export", "--workdir", str(trained[0]), "--format", "hf", "--out", str(out)]) == 0
    assert (out / "tokenizer.json").read_bytes() == (families["llama3"] / "tokenizer.json").read_bytes()
    ours = tokenizers.load(families["llama3"])
    theirs = transformers_tokenizer(out)
    assert (theirs.eos_token, theirs.bos_token, theirs.chat_template) == (
        "<|end_of_text|>", "<|begin_of_text|>", CHAT_TEMPLATE)
    for text in LINES + list(EDGE_TEXTS):
        assert theirs.encode(text, add_special_tokens=False) == ours.encode(text), text
        assert theirs(text)["input_ids"] == ([ours.bos_id] + ours.encode(text)), text
    assert json.loads((out / "config.json").read_text())["bos_token_id"] == ours.bos_id
    imported = hf.read_hf_dir(out)
    assert imported.tokenizer.kind == "hf"
    assert tokenizers.fingerprint(imported.tokenizer) == tokenizers.fingerprint(ours)
    native = tmp_path / "native"
    assert cli.main(["export", "--workdir", str(trained[0]), "--format", "safetensors", "--out", str(native)]) == 0
    assert tokenizers.fingerprint(gptjax.load(native).tokenizer) == tokenizers.fingerprint(ours)


def test_run_special_tokens_export_at_their_ids(families, tmp_path):
    """Chat role markers a run adds to an hf tokenizer are exported as HF special tokens at gptjax's ids."""
    from transformers import PreTrainedTokenizerFast

    tok = tokenizers.WithSpecialTokens(tokenizers.load(families["qwen"]), ("<|user|>", "<|assistant|>"))
    files = hf.hf_family_tokenizer_files(tok, 64)
    (tmp_path / "tokenizer.json").write_bytes(files["tokenizer.json"])
    theirs = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    text = "<|user|>\nGrüße<|assistant|>\n東京"
    assert theirs.encode(text, add_special_tokens=False) == tok.encode(text)
    assert tok.special_ids()["<|assistant|>"] == tok.base.vocab_size + 1


def test_vocabulary_larger_than_the_model_is_refused(families, tmp_path):
    small = ModelConfig(vocab_size=257, block_size=16, n_layer=1, n_head=2, d_model=32)
    tok = tokenizers.load(families["llama3"])
    assert_one_line_error(lambda: hf.export_hf(Config(model=small), random_params(small), tok, tmp_path / "out"),
                          "hf tokenizer", f"has {tok.vocab_size} tokens, more than model.vocab_size=257")
    weights_only = tmp_path / "weights"
    hf.export_hf(Config(model=small), random_params(small), None, weights_only)
    assert_one_line_error(lambda: hf.read_hf_dir(weights_only, tokenizer_dir=families["llama3"]),
                          f"has {tok.vocab_size} tokens, more than model.vocab_size=257")
    shutil.copy(families["llama3"] / "tokenizer.json", weights_only)
    assert_one_line_error(lambda: hf.read_hf_dir(weights_only), "more than model.vocab_size=257")


def test_import_without_eos_is_one_line(families, tmp_path):
    small = ModelConfig(vocab_size=800, block_size=16, n_layer=1, n_head=2, d_model=32)
    src = tmp_path / "src"
    hf.export_hf(Config(model=small), random_params(small), None, src)
    byte_level_dir(tmp_path / "nameless", ["<|im_start|>"], None, {})
    shutil.copy(tmp_path / "nameless" / "tokenizer.json", src)
    assert_one_line_error(lambda: hf.read_hf_dir(src), "holds tokenizer files gptjax cannot read (tokenizer.json)",
                          "names no EOS token")


def test_a_family_directory_with_vocab_json_beside_tokenizer_json_imports_the_fast_tokenizer(families, tmp_path):
    """Qwen ships vocab.json + merges.txt beside tokenizer.json; AutoTokenizer reads the tokenizer.json, so must we."""
    tok = tokenizers.load(families["qwen"])
    m = ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, d_model=32, norm="rmsnorm",
                    position="rope", mlp="swiglu", use_bias=False, qkv_bias=True)
    src = tmp_path / "qwen"
    hf.export_hf(Config(model=m), random_params(m), None, src)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (src / name).write_bytes((families["qwen"] / name).read_bytes())
    bpe = json.loads((src / "tokenizer.json").read_text())["model"]
    write_json(src / "vocab.json", bpe["vocab"])
    merges = [" ".join(pair) if isinstance(pair, list) else pair for pair in bpe["merges"]]
    (src / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    imported = hf.read_hf_dir(src)
    assert imported.family == "qwen2" and imported.tokenizer.kind == "hf"
    assert tokenizers.fingerprint(imported.tokenizer) == tokenizers.fingerprint(tok)


# ---------------------------------------------------------------- tiktoken files (Llama 3's original tokenizer.model)


@pytest.fixture(scope="module")
def tiktoken_ranks() -> dict[bytes, int]:
    """tiktoken ranks (token bytes -> rank) of a byte-level BPE trained on the fixture text with Llama 3's split:
    the 256 single bytes, then each merged token in the order it was learned."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    from gptjax.data import gpt2_bpe

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.train_from_iterator(LINES, trainers.BpeTrainer(vocab_size=700, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    ranks = {gpt2_bpe.unicode_to_bytes(token): rank for token, rank in tok.get_vocab().items()}
    assert sorted(ranks.values()) == list(range(len(ranks))) and all(bytes([b]) in ranks for b in range(256))
    return ranks


def write_tiktoken(path: Path, ranks: dict[bytes, int]) -> Path:
    """A tiktoken BPE file as Llama 3's original release ships it: `BASE64_TOKEN RANK` per line."""
    import base64

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{base64.b64encode(token).decode()} {rank}\n"
                            for token, rank in sorted(ranks.items(), key=lambda item: item[1])))
    return path


def tiktoken_encoding(ranks: dict[bytes, int], specials: list[str]):
    import tiktoken

    return tiktoken.Encoding("gptjax-test-llama3", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                             special_tokens={token: len(ranks) + i for i, token in enumerate(specials)})


def test_tiktoken_tokenizer_model_encodes_as_tiktoken(tiktoken_ranks, tmp_path):
    """A tiktoken tokenizer.model (no tokenizer.json) is an hf tokenizer encoding and decoding as the tiktoken
    library does with Llama 3's pattern and special tokens; EOS is <|end_of_text|>, BOS <|begin_of_text|> is put
    before prompts; it saves and reloads."""
    from gptjax.data import tiktoken_bpe

    assert tiktoken_bpe.LLAMA3_PATTERN == LLAMA3_PATTERN and len(tiktoken_bpe.LLAMA3_SPECIAL_TOKENS) == 256
    specials = list(tiktoken_bpe.LLAMA3_SPECIAL_TOKENS)
    assert (specials[:2], specials[6:10], specials[-1]) == (
        ["<|begin_of_text|>", "<|end_of_text|>"],
        ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"],
        "<|reserved_special_token_250|>")
    src = write_tiktoken(tmp_path / "original" / "tokenizer.model", tiktoken_ranks).parent
    tok = hf.tokenizer_from_hf_dir(src, {"model_type": "llama"})
    enc = tiktoken_encoding(tiktoken_ranks, specials)
    base = len(tiktoken_ranks)
    assert tok.kind == "hf" and tok.vocab_size == enc.n_vocab == base + 256
    assert (tok.eot_id, tok.bos_id, tok.add_bos) == (base + 1, base, True)
    chat = "<|start_header_id|>user<|end_header_id|>\n\nHallo, wie geht's?<|eot_id|>"
    for text in LINES + [TEXT, *EDGE_TEXTS, chat, "1234567 numbers 2024-12-07", "x" * 300]:
        ids = tok.encode(text)
        assert ids == enc.encode(text, allowed_special="all"), text
        assert tok.decode(ids) == enc.decode(ids) == text, text
        if text:
            assert tokenizers.prompt_ids(tok, text) == [base] + ids
    assert tok.encode(chat)[0] == base + 6 and tok.encode(chat)[-1] == base + 9
    tokenizers.save(tok, tmp_path / "saved")
    again = tokenizers.load(tmp_path / "saved")
    assert tokenizers.fingerprint(again) == tokenizers.fingerprint(tok) and again.encode(TEXT) == tok.encode(TEXT)


def test_hf_dir_with_a_tiktoken_tokenizer_model_imports_and_exports(tiktoken_ranks, tmp_path):
    """A weights-only Llama directory plus a tiktoken tokenizer.model imports with it (special tokens from
    tokenizer_config.json's added_tokens_decoder when it has them) and exports a tokenizer.json transformers reads
    the same; ids with a gap, bad ranks, and a tokenizer.model that is neither format are one error line each."""
    base = len(tiktoken_ranks)
    m = ModelConfig(vocab_size=base + 256, block_size=16, n_layer=1, n_head=2, d_model=32, norm="rmsnorm",
                    position="rope", mlp="swiglu", use_bias=False)
    src = tmp_path / "llama3"
    hf.export_hf(Config(model=m), random_params(m), None, src)
    write_tiktoken(src / "tokenizer.model", tiktoken_ranks)
    imported = hf.read_hf_dir(src)
    assert imported.family == "llama" and imported.tokenizer.kind == "hf" and imported.tokenizer.eot_id == base + 1

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|eot_id|>"]
    write_json(src / "tokenizer_config.json", {
        "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {str(base + i): {"content": token, "special": True} for i, token in
                                 enumerate(specials)}})
    tok = hf.read_hf_dir(src).tokenizer
    enc = tiktoken_encoding(tiktoken_ranks, specials)
    assert (tok.vocab_size, tok.eot_id, tok.bos_id, tok.chat_template) == (base + 4, base + 3, base, CHAT_TEMPLATE)
    assert tok.encode(TEXT + "<|eot_id|>") == enc.encode(TEXT + "<|eot_id|>", allowed_special="all")

    out = tmp_path / "exported"
    hf.export_hf(Config(model=m), random_params(m), tok, out)
    theirs = transformers_tokenizer(out)
    for text in LINES[:8] + [TEXT, *EDGE_TEXTS]:
        assert theirs.encode(text, add_special_tokens=False) == enc.encode(text, allowed_special="all"), text
    assert theirs("hi")["input_ids"] == tokenizers.prompt_ids(tok, "hi")
    fast = json.dumps(json.loads((out / "tokenizer.json").read_text()), indent=1).encode()
    (src / "tokenizer.json").write_bytes(fast)  # a tokenizer.json beside it is what AutoTokenizer reads, so gptjax too
    assert hf.read_hf_dir(src).tokenizer.tokenizer_json == fast
    (src / "tokenizer.json").unlink()

    write_json(src / "tokenizer_config.json", {"added_tokens_decoder": {str(base + 1): {"content": "<|x|>"}}})
    assert_one_line_error(lambda: hf.read_hf_dir(src), "added_tokens_decoder are not", "in a row")
    (src / "tokenizer_config.json").unlink()
    write_tiktoken(src / "tokenizer.model", {**tiktoken_ranks, b"\xff\xfe\xfd": base + 5})
    assert_one_line_error(lambda: hf.read_hf_dir(src), "tiktoken ranks are not 0..")
    (src / "tokenizer.model").write_bytes(b"neither sentencepiece nor tiktoken \x00\xff")
    assert_one_line_error(lambda: hf.read_hf_dir(src), "is not a sentencepiece model")


# ---------------------------------------------------------------- the families' own chat templates (hf_chat)

# The public chat templates of Meta-Llama-3-8B-Instruct, Qwen2-7B-Instruct and Mistral-7B-Instruct-v0.2, as their
# tokenizer_config.json carry them (Jinja string literals keep their \n escapes).
LLAMA3_CHAT_TEMPLATE = (
    r"{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    r"message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    r"{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    r"{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
QWEN2_CHAT_TEMPLATE = (
    r"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    r"You are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    r"message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    r"{{ '<|im_start|>assistant\n' }}{% endif %}")
MISTRAL_CHAT_TEMPLATE = (
    r"{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    r"{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    r"{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    r"{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}"
    r"{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
END_OF_TURN = {"llama3": "<|eot_id|>", "qwen2": "<|im_end|>", "mistral": "</s>"}
CONVERSATIONS = (
    [{"role": "user", "content": "Wie heißt die Hauptstadt von Frankreich?"},
     {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "Combien font 2 + 2 ?"}, {"role": "assistant", "content": "Quatre (4)."},
     {"role": "user", "content": "И 東京?"}, {"role": "assistant", "content": "東京は日本の首都です。 🙂"}],
)
SYSTEM_CONVERSATION = [{"role": "system", "content": "Antworte kurz."}, *CONVERSATIONS[0]]


@pytest.fixture(scope="module")
def chat_families(tmp_path_factory) -> dict[str, Path]:
    """Llama-3-, Qwen2- and Mistral-like tokenizer dirs whose tokenizer_config.json carries the family's template."""
    root = tmp_path_factory.mktemp("hf_chat")
    mistral = metaspace_dir(root / "mistral")
    config = json.loads((mistral / "tokenizer_config.json").read_text())
    write_json(mistral / "tokenizer_config.json", {**config, "chat_template": MISTRAL_CHAT_TEMPLATE})
    return {
        "llama3": byte_level_dir(root / "llama3", ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                                   "<|end_header_id|>", "<|eot_id|>"], "<|begin_of_text|>",
                                 {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                                  "chat_template": LLAMA3_CHAT_TEMPLATE}),
        "qwen2": byte_level_dir(root / "qwen2", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None,
                                {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                                 "chat_template": QWEN2_CHAT_TEMPLATE}),
        "mistral": mistral,
    }


def target_runs(ids: list[int], flags: list[bool]) -> list[list[int]]:
    """The maximal runs of consecutive target tokens."""
    runs, previous = [], False
    for token, flag in zip(ids, flags):
        if flag:
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = flag
    return runs


def their_chat_ids(theirs, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    return list(theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                           return_dict=False))


@pytest.mark.parametrize("family", ["llama3", "qwen2", "mistral"])
def test_hf_chat_renders_as_apply_chat_template(chat_families, family):
    """The ids of a conversation equal transformers' apply_chat_template (BOS once, from the template), prompts equal
    it with add_generation_prompt, and the targets are exactly each assistant content and its end-of-turn marker."""
    from gptjax.finetune import hf_chat

    tok = tokenizers.load(chat_families[family])
    theirs = transformers_tokenizer(chat_families[family])
    marker = END_OF_TURN[family]
    for messages in CONVERSATIONS + ((SYSTEM_CONVERSATION,) if family != "mistral" else ()):
        ids, flags = hf_chat.conversation_tokens(tok, messages)
        assert ids == their_chat_ids(theirs, messages), messages
        prompt = messages[:-1]
        assert hf_chat.prompt_tokens(tok, prompt) == their_chat_ids(theirs, prompt, add_generation_prompt=True)
        if tok.bos_id is not None:
            assert ids.count(tok.bos_id) == 1 and ids[0] == tok.bos_id
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        runs = target_runs(ids, flags)
        assert [tok.decode(run) for run in runs] == [answer + marker for answer in answers]
        if family != "mistral":  # byte-level: an answer after its header is tokenized as on its own
            assert runs == [theirs.encode(a, add_special_tokens=False) + [tok._tok.token_to_id(marker)]
                            for a in answers]


def finetune_config(path: Path, objective: str, tok) -> Config:
    from gptjax.config import FinetuneConfig

    task = {"sft": "instruction", "dpo": "preference"}[objective]
    return Config(model=ModelConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2, d_model=32),
                  train=TrainConfig(objective=objective, init_from="unused"),
                  finetune=FinetuneConfig(task=task, data=str(path), template="hf_chat", samples=2))


def test_hf_chat_sft_and_dpo_batches(chat_families, tmp_path):
    """SFT rows (Alpaca and chat records) and DPO pairs are the template's ids with weights on the assistant turns
    only; held-out prompts end with the generation prompt; nothing is added to the vocabulary."""
    from gptjax.finetune import hf_chat
    from gptjax.finetune.batches import load_finetune_data
    from gptjax.finetune.setup import adds_tokens

    tok = tokenizers.load(chat_families["qwen2"])
    theirs = transformers_tokenizer(chat_families["qwen2"])
    alpaca = [{"instruction": f"Übersetze Nummer {i}.", "input": "eins" if i % 2 else "", "output": f"Antwort {i}"}
              for i in range(8)]
    multi_turn = CONVERSATIONS[1]  # the test split's one record (85 % train, 10 % test, the rest val)
    (tmp_path / "sft.json").write_text(json.dumps(alpaca + [{"messages": multi_turn}, {"messages": CONVERSATIONS[0]}]))
    cfg = finetune_config(tmp_path / "sft.json", "sft", tok)
    assert not adds_tokens(cfg)
    data = load_finetune_data(cfg, tok)
    rows = data.splits["train"].arrays
    for row, record in enumerate(alpaca[:2]):
        user = record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
        expected = their_chat_ids(theirs, messages)
        assert rows["tokens"][row, :len(expected)].tolist() == expected
        ids, flags = hf_chat.conversation_tokens(tok, messages)
        assert rows["loss_weights"][row, :len(ids) - 1].tolist() == [float(f) for f in flags[1:]]
        assert tok.decode(rows["tokens"][row, 1:][rows["loss_weights"][row] > 0]) == record["output"] + "<|im_end|>"
    expected = their_chat_ids(theirs, multi_turn)
    test_rows = data.splits["test"].arrays
    assert test_rows["tokens"][0, :len(expected)].tolist() == expected
    assert test_rows["loss_weights"][0].sum() == sum(len(tok.encode(m["content"])) + 1 for m in multi_turn
                                                     if m["role"] == "assistant")
    assert data.prompts["test"] == [their_chat_ids(theirs, multi_turn[:-1], add_generation_prompt=True)]

    pairs = [{**record, "chosen": record["output"], "rejected": "Keine Ahnung."} for record in alpaca]
    (tmp_path / "dpo.json").write_text(json.dumps(pairs + pairs[:2]))
    data = load_finetune_data(finetune_config(tmp_path / "dpo.json", "dpo", tok), tok)
    rows = data.splits["train"].arrays
    for field in ("chosen", "rejected"):
        targets = rows[field][0, 1:][rows[f"{field}_weights"][0] > 0]
        assert tok.decode(targets) == pairs[0][field] + "<|im_end|>"
    user = alpaca[0]["instruction"]
    prompt = their_chat_ids(theirs, [{"role": "user", "content": user}], add_generation_prompt=True)
    assert rows["chosen"][0, :len(prompt)].tolist() == rows["rejected"][0, :len(prompt)].tolist() == prompt


def test_hf_chat_sft_run_trains_and_answers_held_out_prompts(chat_families, tmp_path):
    """An SFT run from a base with a ChatML tokenizer trains on hf_chat rows (its vocabulary unchanged) and writes
    its held-out answers after the template's generation prompt."""
    import flax.linen as nn

    from gptjax import config as config_lib
    from gptjax.model.transformer import Transformer, init_params
    from gptjax.train.loop import train

    tok = tokenizers.load(chat_families["qwen2"])
    base_model = ModelConfig(vocab_size=tok.vocab_size, block_size=96, n_layer=1, n_head=2, d_model=32)
    base = tmp_path / "base"
    export.export_native(LM(Config(model=base_model), nn.unbox(init_params(Transformer(base_model), 0, 8)), tok), base)
    records = [{"instruction": f"Zähle bis {i}.", "input": "", "output": " ".join(map(str, range(i)))}
               for i in range(1, 11)]
    (tmp_path / "sft.json").write_text(json.dumps(records))
    cfg = dataclasses.replace(finetune_config(tmp_path / "sft.json", "sft", tok), model=base_model)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, init_from=str(base), steps=2, batch_size=2, warmup_steps=1, eval_every=2, checkpoint_every=2,
        log_every=1, tensorboard=False), finetune=dataclasses.replace(cfg.finetune, samples=1, max_new_tokens=4))
    config_lib.validate(cfg)
    train(cfg, tmp_path / "run", show_progress=False)
    sample, = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert sample["prompt"] == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"  # the template's default
                                "<|im_start|>user\nZähle bis 9.<|im_end|>\n<|im_start|>assistant\n")
    assert gptjax.load(tmp_path / "run").tokenizer.vocab_size == tok.vocab_size


@pytest.mark.parametrize("family, marker", [("llama3", "<|eot_id|>"), ("qwen2", "<|im_end|>"), ("mistral", "</s>")])
def test_hf_chat_responses_stop_at_the_templates_end_of_turn(chat_families, family, marker):
    from gptjax.finetune.batches import RecordEncoder

    tok = tokenizers.load(chat_families[family])
    assert RecordEncoder("hf_chat", tok).stop_id() == tok._tok.token_to_id(marker)


def test_hf_chat_template_with_generation_markers_renders_their_body(chat_families):
    """transformers' `{% generation %}` assistant-mask markers render their body, and the targets are the same."""
    from gptjax.finetune import hf_chat

    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}{% generation %}"
                "{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>{% endif %}\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    qwen2 = tokenizers.load(chat_families["qwen2"])
    tok = tokenizers.HfTokenizer(qwen2.tokenizer_json, "<|im_end|>", None, template)
    ids, flags = hf_chat.conversation_tokens(tok, CONVERSATIONS[1])
    # trim_blocks drops the newline after {% endif %}, as in transformers
    assert tok.decode(ids) == "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>" for m in CONVERSATIONS[1])
    assert [tok.decode(run) for run in target_runs(ids, flags)] == [
        m["content"] + "<|im_end|>" for m in CONVERSATIONS[1] if m["role"] == "assistant"]


def test_hf_chat_bad_input_is_one_line(chat_families, families, tmp_path):
    """A tokenizer without a chat template, a conversation the template refuses and a template that does not parse
    are one error line each."""
    from gptjax.finetune import hf_chat
    from gptjax.finetune.batches import RecordEncoder

    for tok, what in ((tokenizers.CharTokenizer("abc"), "a char tokenizer, which has no chat template"),
                      (tokenizers.load(families["mistral"]), "an hf tokenizer without a chat template")):
        assert_one_line_error(lambda: RecordEncoder("hf_chat", tok), "finetune.template=hf_chat", what,
                              "finetune.template=chat")
    mistral = tokenizers.load(chat_families["mistral"])
    assert_one_line_error(lambda: hf_chat.conversation_tokens(mistral, SYSTEM_CONVERSATION),
                          "chat template refused the conversation", "Conversation roles must alternate")
    broken = tokenizers.HfTokenizer(mistral.tokenizer_json, "</s>", "<s>", "{% for m in messages %}{{ m }")
    assert_one_line_error(lambda: hf_chat.prompt_tokens(broken, CONVERSATIONS[0]), "does not parse")


# ---------------------------------------------------------------- prepare with a tiktoken tokenizer.model


def test_prepare_with_a_tiktoken_tokenizer_model(tiktoken_ranks, tmp_path):
    """`gptjax prepare --tokenizer hf --tokenizer-dir DIR` on a directory holding only Llama 3's original tiktoken
    tokenizer.model: the shards hold tiktoken's ids of each document, documents separated by <|end_of_text|>; the
    prepared tokenizer reloads as the same hf tokenizer, and the data cache key follows the file."""
    from gptjax.data import store, tiktoken_bpe

    tok_dir = write_tiktoken(tmp_path / "llama3_original" / "tokenizer.model", tiktoken_ranks).parent
    inputs = tmp_path / "texts"
    inputs.mkdir()
    documents = [" ".join(LINES[i::4]) for i in range(4)]
    for i, text in enumerate(documents):
        (inputs / f"{i}.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "data"
    assert cli.main(["prepare", "--input", str(inputs), "--out", str(out), "--raw", "--workers", "1", "--quiet",
                     "--val-fraction", "0", "--tokenizer", "hf", "--tokenizer-dir", str(tok_dir)]) == 0
    enc = tiktoken_encoding(tiktoken_ranks, list(tiktoken_bpe.LLAMA3_SPECIAL_TOKENS))
    eot = enc.encode_single_token("<|end_of_text|>")
    prepared = tokenizers.load(out / "tokenizer")
    assert (prepared.kind, prepared.eot_id, prepared.vocab_size) == ("hf", eot, enc.n_vocab)
    assert tokenizers.fingerprint(prepared) == tokenizers.fingerprint(tokenizers.HfTokenizer.from_dir(tok_dir))
    tokens = np.concatenate([store.read_tokens(p) for p in store.split_shards(out, "train")]).tolist()
    stored = [[]]
    for token in tokens:
        stored.append([]) if token == eot else stored[-1].append(token)
    stored = [doc for doc in stored if doc]
    assert sorted(stored) == sorted(enc.encode(text) for text in documents)
    assert store.read_manifest(out)["tokenizer"]["fingerprint"] == tokenizers.fingerprint(prepared)

    digest = tokenizers.source_digest(tok_dir)
    write_tiktoken(tok_dir / "tokenizer.model", dict(list(tiktoken_ranks.items())[:-1]))
    assert tokenizers.source_digest(tok_dir) != digest


def test_prepare_tokenizer_dir_errors_for_tiktoken(tmp_path):
    """No tokenizer.json nor tokenizer.model, and a tokenizer.model that is not tiktoken: one line each, naming the
    path and what to point --tokenizer-dir at."""
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(lambda: settings.check(DataConfig(dataset="", tokenizer="hf", tokenizer_dir=str(empty))),
                          str(empty), "nor a tiktoken tokenizer.model", "tokenizer.json")
    assert_one_line_error(lambda: tokenizers.HfTokenizer.from_dir(empty), "no Hugging Face tokenizer in",
                          "tiktoken tokenizer.model")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.model").write_bytes(b"not a rank file\n\x00\xff")
    assert_one_line_error(lambda: settings.check(DataConfig(dataset="", tokenizer="hf", tokenizer_dir=str(bad))),
                          str(bad / "tokenizer.model"), "is not a tiktoken BPE file", "tokenizer.json")
    assert_one_line_error(lambda: tokenizers.HfTokenizer.from_dir(bad), str(bad / "tokenizer.model"),
                          "is not a tiktoken BPE file")
