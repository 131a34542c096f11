"""The `hf_chat` template: conversations rendered with the base tokenizer's own chat template (the Jinja string of
its tokenizer_config.json), giving the token ids transformers' `apply_chat_template(messages, tokenize=True)` gives.

Rendering is transformers': a sandboxed (ImmutableSandboxedEnvironment) Jinja template with `trim_blocks` and
`lstrip_blocks`, `raise_exception`, loop controls, a `tojson` that keeps non-ASCII text, the family's `bos_token` /
`eos_token`, and `add_generation_prompt` (the assistant header a prompt ends with). The rendered text is tokenized
without the tokenizer's own BOS: a template that wants BOS writes it (Llama 3, Mistral, Gemma), so it is never
doubled. One departure, for determinism: `strftime_now` is not offered, so templates that stamp today's date
(Llama 3.1+) fall back to their fixed one and the same records always give the same tokens.

Targets are each assistant turn's content plus the end-of-turn marker the template writes after it
(`<|eot_id|>`, `<|im_end|>`, `</s>`). As trl and transformers' `return_assistant_tokens_mask` need
`{% generation %}` markers that few families' templates carry, the span is found by rendering prefixes: the text
`render(messages[:i + 1])` adds after `render(messages[:i], add_generation_prompt=True)`, its trailing whitespace
(the newline between turns) left out. Every token overlapping a span is a target.
"""
from __future__ import annotations

import functools
import json
from typing import Sequence

from gptjax.data import tokenizer as tokenizers
from gptjax.errors import GptjaxError

Span = tuple[int, int]  # [start, end) character offsets into a rendered conversation


@functools.lru_cache(maxsize=8)
def _compiled(template: str):
    """The Jinja template object of `template`, in an environment like transformers' chat-template one."""
    try:
        import jinja2
        from jinja2.ext import Extension, loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise GptjaxError("finetune.template=hf_chat needs the `jinja2` package: pip install 'gptjax[hf]'") from None

    class GenerationBlock(Extension):
        """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask markers) renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateError as e:
        raise GptjaxError(f"finetune.template=hf_chat: the base tokenizer's chat template does not parse ({e}); fix "
                          f"chat_template in its tokenizer_config.json") from None


def chat_tokenizer(tok: tokenizers.Tokenizer) -> tokenizers.HfTokenizer:
    """The hf tokenizer under `tok` when it carries a chat template; else one error line saying what to do."""
    base = tokenizers.base_tokenizer(tok)
    if not isinstance(base, tokenizers.HfTokenizer) or not base.chat_template:
        what = (f"a {base.kind} tokenizer, which has no chat template" if not isinstance(base, tokenizers.HfTokenizer)
                else "an hf tokenizer without a chat template")
        raise GptjaxError(f"finetune.template=hf_chat renders the base model's own chat template, but its tokenizer is "
                          f"{what}; use finetune.template=chat (gptjax's role tokens) or alpaca, or import the base "
                          f"with a tokenizer_config.json carrying chat_template (gptjax import --tokenizer-dir DIR)")
    return base


def render(tok: tokenizers.HfTokenizer, messages: Sequence[dict], add_generation_prompt: bool) -> str:
    """`messages` as the text `tok`'s chat template makes of them."""
    template = _compiled(tok.chat_template)
    import jinja2

    special_tokens = {name: value for name, value in (("bos_token", tok.bos_token), ("eos_token", tok.eos_token))
                      if value is not None}
    try:
        return template.render(messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
                               **special_tokens)
    except jinja2.exceptions.TemplateError as e:
        first = messages[0]["content"][:40] if messages else ""
        raise GptjaxError(f"finetune.template=hf_chat: the base tokenizer's chat template refused the conversation "
                          f"starting {first!r} ({len(messages)} messages): {e}; make the records fit the family's "
                          f"chat format (roles, order)") from None


def assistant_spans(tok: tokenizers.HfTokenizer, messages: Sequence[dict]) -> tuple[str, list[Span]]:
    """The rendered conversation and, per assistant turn, the span of its content and end-of-turn marker."""
    text = render(tok, messages, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tok, messages[:i], add_generation_prompt=True)
        through = render(tok, messages[: i + 1], add_generation_prompt=False)
        end = max(len(through.rstrip()), len(before))
        if not through.startswith(before) or not text.startswith(through[:end]):
            raise GptjaxError(f"finetune.template=hf_chat: the base tokenizer's chat template renders assistant turn "
                              f"{i} differently once it is followed by more turns (or without the generation "
                              f"prompt before it), so its target tokens cannot be found; use finetune.template=chat "
                              f"or records that end with that turn")
        spans.append((len(before), end))
    return text, spans


def overlapping(offsets: Sequence[Span], spans: Sequence[Span]) -> list[bool]:
    """Per token (its character span), whether it overlaps any of `spans` (sorted and disjoint)."""
    flags, span = [], 0
    for start, end in offsets:
        while span < len(spans) and start >= spans[span][1]:
            span += 1
        flags.append(span < len(spans) and end > spans[span][0])
    return flags


def conversation_tokens(tok: tokenizers.HfTokenizer, messages: Sequence[dict]) -> tuple[list[int], list[bool]]:
    """The ids of the rendered conversation (transformers' apply_chat_template(messages)) and, per token, whether it
    is a target: part of an assistant turn's content or its end-of-turn marker."""
    text, spans = assistant_spans(tok, messages)
    ids, offsets = tok.encode_with_offsets(text)
    return ids, overlapping(offsets, spans)


def prompt_tokens(tok: tokenizers.HfTokenizer, messages: Sequence[dict]) -> list[int]:
    """The ids of `messages` ending with the assistant header (apply_chat_template(..., add_generation_prompt=True)):
    what a response is generated after."""
    return tok.encode(render(tok, messages, add_generation_prompt=True))


def turn_end_id(tok: tokenizers.HfTokenizer) -> int:
    """The id of the token that ends an assistant turn (`<|eot_id|>`, `<|im_end|>`, `</s>`): the last target token of
    a one-exchange conversation, where generating a response stops."""
    ids, is_target = conversation_tokens(tok, [{"role": "user", "content": "Hi"},
                                               {"role": "assistant", "content": "Hello"}])
    return [i for i, target in zip(ids, is_target) if target][-1]
