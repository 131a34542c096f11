"""tiktoken-style BPE files (Llama 3's original `tokenizer.model`: one `BASE64_TOKEN RANK` line per token) as a
Hugging Face `tokenizers` tokenizer.json, so the hf tokenizer kind reads them.

The conversion is the one transformers' `TikTokenConverter` makes: a byte-level BPE whose vocabulary is the ranks
spelled in GPT-2's byte alphabet, whose merges are every split of a token into two tokens (ordered by the token's
rank, then the ranks of the halves), with `ignore_merges` (a pre-token that is itself a token stays one, as in
tiktoken); the family's split regex, then ByteLevel without its own regex; a ByteLevel decoder; the special tokens
appended after the ranks; BOS put before a sequence by the post-processor (as Llama 3's tokenizer.json does)."""
from __future__ import annotations

import base64
import binascii
from typing import Mapping, Sequence

from gptjax.data.gpt2_bpe import bytes_to_unicode
from gptjax.errors import GptjaxError

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_NUM_SPECIAL_TOKENS = 256
# Llama 3's special tokens in id order after its 128000 ranks (Meta's llama3 tokenizer.py).
LLAMA3_SPECIAL_TOKENS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>", "<|reserved_special_token_3|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|reserved_special_token_4|>", "<|eot_id|>",
    *(f"<|reserved_special_token_{i}|>" for i in range(5, LLAMA3_NUM_SPECIAL_TOKENS - 5)),
)
LLAMA3_BOS = "<|begin_of_text|>"
LLAMA3_EOS = "<|end_of_text|>"


def read_ranks(data: bytes) -> dict[bytes, int] | None:
    """The token -> rank table of a tiktoken BPE file, or None when `data` is not one (every non-empty line must be
    `BASE64 RANK`)."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    ranks: dict[bytes, int] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            return None
        try:
            token = base64.b64decode(fields[0], validate=True)
        except (binascii.Error, ValueError):
            return None
        if not token or token in ranks:
            return None
        ranks[token] = int(fields[1])
    return ranks or None


def check_ranks(ranks: Mapping[bytes, int], where: str) -> None:
    """The ranks must be 0..n-1 and include every single byte (a byte-level BPE encodes any text)."""
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise GptjaxError(f"{where}: the tiktoken ranks are not 0..{len(ranks) - 1} each once; gptjax needs every id "
                          f"below the vocabulary size to be a token")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise GptjaxError(f"{where}: the tiktoken ranks lack {len(missing)} single bytes (e.g. {missing[0]:#04x}); a "
                          f"byte-level BPE needs all 256 to encode any text")


def merges_from_ranks(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Every split of a token into two tokens, by the token's rank, then by the ranks of its left and right half."""
    merges = []
    for token, _ in sorted(ranks.items(), key=lambda item: item[1]):
        splits = sorted((ranks[token[:i]], ranks[token[i:]], i) for i in range(1, len(token))
                        if token[:i] in ranks and token[i:] in ranks)
        merges += [(token[:i], token[i:]) for _, _, i in splits]
    return merges


def tokenizer_json(ranks: Mapping[bytes, int], special_tokens: Sequence[str], bos_token: str | None,
                   pattern: str = LLAMA3_PATTERN, where: str = "tokenizer.model") -> bytes:
    """The tokenizer.json of the tiktoken `ranks` with `special_tokens` at ids len(ranks).. in order and, if given,
    `bos_token` put before every sequence by the post-processor."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    check_ranks(ranks, where)
    table = bytes_to_unicode()

    def spell(token: bytes) -> str:
        return "".join(table[b] for b in token)

    vocab = {spell(token): rank for token, rank in ranks.items()}
    merges = [(spell(left), spell(right)) for left, right in merges_from_ranks(ranks)]
    tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(token, normalized=False, special=True) for token in special_tokens])
    byte_level = processors.ByteLevel(trim_offsets=False)
    if bos_token is None or bos_token not in special_tokens:
        tok.post_processor = byte_level
    else:
        bos_id = len(ranks) + list(special_tokens).index(bos_token)
        tok.post_processor = processors.Sequence([byte_level, processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A {bos_token}:1 $B:1",
            special_tokens=[(bos_token, bos_id)])])
    return tok.to_str().encode()
