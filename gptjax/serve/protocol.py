"""The OpenAI wire format: request bodies checked into typed params (every refusal an OpenAI-style error), the text
of a choice assembled from its tokens (stop strings, incomplete UTF-8 held back), and the response objects."""
from __future__ import annotations

import dataclasses
import math
import secrets
import time
from typing import Any, Sequence

MAX_STOP_STRINGS = 4  # as OpenAI
MAX_LOGPROBS = 5
MAX_SEED = 2 ** 63 - 1
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


class ApiError(Exception):
    """A refused request: its HTTP status and OpenAI's error object {message, type, param, code}."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the served model accepts: its name, vocabulary and per-request context (prompt + max_tokens)."""

    model_name: str
    vocab_size: int
    max_context: int


@dataclasses.dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the token counts


@dataclasses.dataclass(frozen=True)
class CompletionParams:
    prompts: tuple[str | tuple[int, ...], ...]  # text, or token ids as given
    generation: GenerationParams
    logprobs: int | None
    echo: bool


@dataclasses.dataclass(frozen=True)
class ChatParams:
    messages: tuple[dict, ...]
    generation: GenerationParams


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def check_model(body: dict, limits: Limits) -> None:
    name = body.get("model")
    if name is None:
        raise ApiError("you must provide a model parameter", "model", "missing_required_parameter")
    if name != limits.model_name:
        raise ApiError(f"the model {name!r} does not exist; this server serves {limits.model_name!r} "
                       f"(GET /v1/models)", "model", "model_not_found")


def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not _is_number(value) or value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ApiError(f"{name}={value!r} is invalid: it must be a number in {bracket}{low}, {high}]", name,
                       "invalid_value")
    return float(value)


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) \
            or len(stops) > MAX_STOP_STRINGS:
        raise ApiError(f"stop must be a non-empty string or a list of at most {MAX_STOP_STRINGS} non-empty strings",
                       "stop", "invalid_value")
    return tuple(stops)


def generation_params(body: dict, max_tokens_names: Sequence[str], default_max_tokens: int | None,
                      limits: Limits) -> GenerationParams:
    """The sampling settings shared by both endpoints; max_tokens None (chat's default) means up to the context."""
    name = next((n for n in max_tokens_names if body.get(n) is not None), max_tokens_names[0])
    max_tokens = body.get(name, default_max_tokens)
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 0):
        raise ApiError(f"{name}={max_tokens!r} is invalid: it must be an integer >= 0", name, "invalid_value")
    if body.get("n", 1) != 1 or body.get("best_of", 1) != 1:
        raise ApiError("only n=1 (and best_of=1) is supported: send several requests instead", "n", "invalid_value")
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or not 0 <= seed <= MAX_SEED):
        raise ApiError(f"seed={seed!r} is invalid: it must be an integer in [0, 2^63)", "seed", "invalid_value")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(f"stream={stream!r} is invalid: it must be true or false", "stream", "invalid_value")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError("stream_options must be an object like {\"include_usage\": true}", "stream_options",
                       "invalid_value")
    return GenerationParams(
        max_tokens=max_tokens if max_tokens is not None else -1,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        seed=seed, stop=_stop(body), stream=stream, include_usage=stream and options.get("include_usage", False))


def _prompts(prompt: Any, limits: Limits) -> tuple[str | tuple[int, ...], ...]:
    """The prompt field's forms: a string, a list of strings, a list of token ids, or a list of such lists."""
    if isinstance(prompt, str):
        return (prompt,)
    if isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return tuple(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, list) and p and all(_is_int(t) for t in p)
                                                     for p in prompt):
        prompts = prompt
    else:
        raise ApiError("prompt must be a string, a list of strings, a non-empty list of token ids or a list of "
                       "such lists", "prompt", "invalid_value")
    for row, ids in enumerate(prompts):
        bad = next((t for t in ids if not 0 <= t < limits.vocab_size), None)
        if bad is not None:
            raise ApiError(f"token id {bad} in prompt {row} is outside the model's vocabulary [0, "
                           f"{limits.vocab_size})", "prompt", "invalid_token_id")
    return tuple(tuple(ids) for ids in prompts)


def completion_params(body: dict, limits: Limits) -> CompletionParams:
    check_model(body, limits)
    if "prompt" not in body:
        raise ApiError("you must provide a prompt parameter", "prompt", "missing_required_parameter")
    generation = generation_params(body, ("max_tokens",), DEFAULT_MAX_TOKENS, limits)
    logprobs = body.get("logprobs")
    if logprobs is not None and (not _is_int(logprobs) or not 0 <= logprobs <= MAX_LOGPROBS):
        raise ApiError(f"logprobs={logprobs!r} is invalid: it must be an integer in [0, {MAX_LOGPROBS}]", "logprobs",
                       "invalid_value")
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise ApiError(f"echo={echo!r} is invalid: it must be true or false", "echo", "invalid_value")
    if generation.stream and logprobs is not None:
        raise ApiError("logprobs are not streamed: request them without stream", "logprobs", "unsupported_value")
    if generation.max_tokens == 0 and not echo:
        raise ApiError("max_tokens=0 generates nothing: pass echo=true (with logprobs) to score the prompt",
                       "max_tokens", "invalid_value")
    return CompletionParams(_prompts(body["prompt"], limits), generation, logprobs, echo)


def _message(index: int, message: Any) -> dict:
    if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
        raise ApiError(f"messages[{index}] must be an object with role system, user or assistant", "messages",
                       "invalid_value")
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text parts
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise ApiError(f"messages[{index}].content parts must all be text parts", "messages", "invalid_value")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ApiError(f"messages[{index}].content must be a string", "messages", "invalid_value")
    return {"role": message["role"], "content": content}


def chat_params(body: dict, limits: Limits) -> ChatParams:
    check_model(body, limits)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages must be a non-empty list of messages", "messages", "invalid_value")
    if body.get("logprobs") or body.get("tools"):
        raise ApiError("chat logprobs and tools are not supported", "logprobs" if body.get("logprobs") else "tools",
                       "unsupported_value")
    generation = generation_params(body, ("max_completion_tokens", "max_tokens"), None, limits)
    if generation.max_tokens == 0:
        raise ApiError("max_tokens must be >= 1 for a chat completion", "max_tokens", "invalid_value")
    return ChatParams(tuple(_message(i, m) for i, m in enumerate(messages)), generation)


def fit_max_tokens(prompt_length: int, max_tokens: int, limits: Limits, param: str = "max_tokens") -> int:
    """max_tokens checked against the context left after the prompt; -1 (not given) becomes all of it."""
    room = limits.max_context - prompt_length
    if prompt_length == 0:
        raise ApiError("the prompt is empty after tokenization", "prompt", "invalid_value")
    if room < (1 if max_tokens < 0 else max_tokens):
        raise ApiError(f"this model's context is {limits.max_context} tokens; the prompt has {prompt_length} and "
                       f"{param}={max_tokens} asks for {max(max_tokens, 1)} more: shorten the prompt or lower "
                       f"{param}", param, "context_length_exceeded")
    return room if max_tokens < 0 else max_tokens


class TextAssembler:
    """A choice's text as its tokens arrive: whole-text decoding (so multi-byte characters split over tokens come out
    whole), cut before the first stop string, with any tail that could begin a stop string (or an incomplete
    character) held back until it cannot."""

    def __init__(self, decode, stops: Sequence[str]):
        self.decode, self.stops = decode, tuple(stops)
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Adds a token; returns the text that is now final (maybe ""). Sets `stopped` at a stop string."""
        self.ids.append(token_id)
        self.text = self.decode(self.ids)
        cut = min((i for i in (self.text.find(s, max(self.sent - len(s), 0)) for s in self.stops) if i >= 0),
                  default=-1)
        if cut >= 0:
            self.text, self.stopped = self.text[:cut], True
            return self._release(len(self.text))
        held = max((n for s in self.stops for n in range(1, len(s)) if self.text.endswith(s[:n])), default=0)
        end = len(self.text) - held
        while end > self.sent and self.text[end - 1] == "\ufffd":
            end -= 1
        return self._release(end)

    def finish(self) -> str:
        """The rest of the text once no token follows."""
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        delta, self.sent = self.text[self.sent:end], max(self.sent, end)
        return delta


def token_strings(decode, ids: Sequence[int]) -> list[str]:
    return [decode([i]) for i in ids]


def logprobs_object(decode, ids: Sequence[int], logprobs: Sequence[float | None],
                    tops: Sequence[Sequence[tuple[int, float]] | None], n_top: int, text_start: int = 0) -> dict:
    """OpenAI's completion `logprobs`: tokens, token_logprobs, top_logprobs (the `n_top` most likely, as
    {token text: logprob}) and each token's character offset. The first prompt token has None (nothing before it)."""
    tokens = token_strings(decode, ids)
    offsets, at = [], text_start
    for text in tokens:
        offsets.append(at)
        at += len(text)
    top_dicts = [None if top is None else {decode([i]): v for i, v in list(top)[:n_top]} for top in tops]
    return {"tokens": tokens, "token_logprobs": list(logprobs), "top_logprobs": top_dicts, "text_offset": offsets}


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def models_list(limits: Limits, created: int) -> dict:
    return {"object": "list", "data": [{"id": limits.model_name, "object": "model", "created": created,
                                        "owned_by": "gptjax", "max_model_len": limits.max_context}]}
