"""The OpenAI-compatible HTTP app (FastAPI) over the continuous-batching engine.

Routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (both stream with server-sent events when
`stream` is true), GET /health, and vLLM's tokenizer routes (GET /tokenizer_info, POST /tokenize, /detokenize) that
lm-eval's `local-completions` model uses as its `remote` tokenizer. A refused request gets OpenAI's error body
{"error": {message, type, param, code}}: 400 for bad input, 429 when the waiting queue is full, 503 while shutting
down. Shutdown (the lifespan's end, after uvicorn has let in-flight HTTP requests finish) stops the engine, which
cancels whatever is still queued or running after `shutdown_timeout` seconds.

Chat prompts use the model's chat template: the run's own finetune.template when it is `chat` or `hf_chat`, else
`hf_chat` when the tokenizer carries a chat template (an imported HF instruct model), else gptjax's `chat` role
headers (gptjax/finetune/templates.py). Generation stops at the template's end-of-turn token or <|endoftext|>.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
from typing import Any, AsyncIterator

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from gptjax.data import tokenizer as tokenizers
from gptjax.errors import GptjaxError
from gptjax.finetune.batches import RecordEncoder
from gptjax.serve import protocol
from gptjax.serve.engine import (
    Engine,
    EngineStopped,
    FinishEvent,
    PromptEvent,
    QueueFull,
    Request,
    Sampling,
    TokenEvent,
)
from gptjax.serve.protocol import ApiError, Limits

log = logging.getLogger(__name__)
CHAT_TEMPLATES = ("chat", "hf_chat")


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    model_name: str
    max_batch: int = 8
    max_context: int | None = None  # None: the model's block_size
    max_queue: int = 64
    shutdown_timeout: float = 30.0
    warm_up: bool = False


def chat_template_name(lm) -> str:
    """Which chat template serves this model (see the module docstring)."""
    if lm.cfg.finetune.template in CHAT_TEMPLATES:
        return lm.cfg.finetune.template
    base = tokenizers.base_tokenizer(lm.tokenizer)
    return "hf_chat" if isinstance(base, tokenizers.HfTokenizer) and base.chat_template else "chat"


def encode_with_specials(tok, text: str) -> list[int]:
    """`text`'s ids with each literal <|endoftext|> (the tokenizer's own end-of-text text) as its one id, as HF
    tokenizers treat special tokens; the text between is encoded as usual."""
    eot_text = tok.decode([tok.eot_id])
    pieces = text.split(eot_text) if eot_text else [text]
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        ids += ([tok.eot_id] if i else []) + (tok.encode(piece) if piece else [])
    return ids


@dataclasses.dataclass
class Choice:
    """One choice being generated: its engine request, its text and the logprobs of its tokens."""

    request: Request
    events: asyncio.Queue
    text: protocol.TextAssembler
    prompt_ids: list[int]
    token_ids: list[int] = dataclasses.field(default_factory=list)
    token_logprobs: list[float] = dataclasses.field(default_factory=list)
    token_tops: list[list[tuple[int, float]]] = dataclasses.field(default_factory=list)
    prompt_logprobs: PromptEvent | None = None
    finish_reason: str | None = None

    async def deltas(self) -> AsyncIterator[str]:
        """The choice's new text as it becomes final; sets finish_reason at the end."""
        while self.finish_reason is None:
            event = await self.events.get()
            if isinstance(event, PromptEvent):
                self.prompt_logprobs = event
            elif isinstance(event, TokenEvent):
                if self.text.stopped:  # decoded before the engine saw the cancellation: not part of the choice
                    continue
                self.token_ids.append(event.token_id)
                self.token_logprobs.append(event.logprob)
                self.token_tops.append(event.top)
                if event.token_id in self.request.stop_ids:
                    continue
                delta = self.text.push(event.token_id)
                if self.text.stopped:
                    self.request.cancel()
                if delta:
                    yield delta
            else:
                self.finish_reason = self._reason(event)
        tail = self.text.finish()
        if tail:
            yield tail

    def _reason(self, event: FinishEvent) -> str:
        if self.text.stopped:
            return "stop"
        if event.reason in ("cancelled", "error"):
            raise ApiError("the request was cancelled: the server is shutting down" if event.reason == "cancelled"
                           else "the engine failed while generating; see the server's log", None, event.reason,
                           503 if event.reason == "cancelled" else 500,
                           "service_unavailable" if event.reason == "cancelled" else "server_error")
        return event.reason

    async def run(self) -> None:
        async for _ in self.deltas():
            pass


class Service:
    """The model, engine and limits behind the routes."""

    def __init__(self, lm, settings: ServeSettings):
        if lm.tokenizer is None:
            raise GptjaxError("gptjax serve needs a model with a tokenizer; this one was imported weights-only: "
                              "re-import it with --tokenizer-dir")
        self.lm, self.settings = lm, settings
        self.tokenizer = lm.tokenizer
        max_context = settings.max_context or lm.config.block_size
        if not 2 <= max_context <= lm.config.block_size:
            raise GptjaxError(f"max_context {max_context} must be in [2, {lm.config.block_size}] (the model's "
                              f"block_size)")
        self.limits = Limits(settings.model_name, lm.config.vocab_size, max_context)
        self.engine = Engine(lm.model, lm.params, settings.max_batch, max_context, settings.max_queue)
        self.chat_template = chat_template_name(lm)
        self.chat = RecordEncoder(self.chat_template, self.tokenizer)
        self.created = protocol.now()

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    def submit(self, prompts: list[list[int]], max_tokens: list[int], generation: protocol.GenerationParams,
               stop_ids: frozenset[int], score_prompt: bool = False) -> list[Choice]:
        """Queues one engine request per prompt (all or none); their events arrive on this event loop."""
        loop = asyncio.get_running_loop()
        choices = []
        for ids, n_tokens in zip(prompts, max_tokens):
            events: asyncio.Queue = asyncio.Queue()

            def on_event(event, events=events):
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening any more
                    loop.call_soon_threadsafe(events.put_nowait, event)

            seed = generation.seed if generation.seed is not None else secrets.randbits(63)
            request = Request(ids, n_tokens, Sampling(generation.temperature, generation.top_p, seed), stop_ids,
                              on_event, score_prompt)
            choices.append(Choice(request, events, protocol.TextAssembler(self.decode, generation.stop), ids))
        try:
            self.engine.submit([c.request for c in choices])
        except QueueFull as e:
            raise ApiError(f"too many requests: {e}; retry later", None, "rate_limit_exceeded", 429,
                           "rate_limit_error") from None
        except EngineStopped as e:
            raise ApiError(str(e), None, "shutting_down", 503, "service_unavailable") from None
        return choices


def _sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _stream(choices: list[Choice], chunk, usage_chunk: dict | None) -> AsyncIterator[str]:
    """Server-sent events: each choice's deltas as `chunk(index, text, finish_reason)` objects, then (asked for by
    stream_options.include_usage) `usage_chunk` with the token counts, then [DONE]. A client that goes away cancels
    its requests."""
    try:
        for index, choice in enumerate(choices):
            first = chunk(index, None, None)
            if first is not None:
                yield _sse(first)
            async for delta in choice.deltas():
                yield _sse(chunk(index, delta, None))
            yield _sse(chunk(index, "", choice.finish_reason))
        if usage_chunk is not None:
            yield _sse({**usage_chunk, "choices": [], "usage": protocol.usage(
                sum(len(c.prompt_ids) for c in choices), sum(len(c.token_ids) for c in choices))})
        yield "data: [DONE]\n\n"
    except ApiError as e:
        yield _sse(e.body())
    finally:
        for choice in choices:
            choice.request.cancel()


def completion_choice(service: Service, index: int, choice: Choice, prompt_text: str, params) -> dict:
    """One /v1/completions choice: its text (the prompt first under echo) and, if asked, its logprobs."""
    text = choice.text.text
    logprobs = None
    if params.logprobs is not None:
        kept = len(choice.token_ids)
        if choice.text.stopped:  # tokens past the stop string are not part of the choice
            kept = next((i for i in range(len(choice.token_ids) + 1)
                         if len(service.decode(choice.token_ids[:i])) >= len(text)), len(choice.token_ids))
        ids, lps, tops = choice.token_ids[:kept], choice.token_logprobs[:kept], choice.token_tops[:kept]
        if params.echo:
            scored = choice.prompt_logprobs
            ids = choice.prompt_ids + ids
            lps = [None] + scored.logprobs + lps
            tops = [None] + scored.top + tops
        logprobs = protocol.logprobs_object(service.decode, ids, lps, tops, params.logprobs)
    full_text = (prompt_text + text) if params.echo else text
    return {"index": index, "text": full_text, "logprobs": logprobs, "finish_reason": choice.finish_reason}


def create_app(lm, settings: ServeSettings):
    """The FastAPI app serving `lm`; the engine runs while the app's lifespan does."""
    service = Service(lm, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if settings.warm_up:
            await asyncio.to_thread(service.engine.warm_up)
        service.engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(service.engine.stop, settings.shutdown_timeout)

    app = FastAPI(title="gptjax", lifespan=lifespan)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(request, error: ApiError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        return JSONResponse(ApiError(str(error.detail), code=str(error.status_code), status=error.status_code).body(),
                            status_code=error.status_code)

    @app.exception_handler(Exception)
    async def server_error(request, error: Exception):
        log.exception("request failed")
        return JSONResponse(ApiError(f"internal error: {error}", None, "server_error", 500, "server_error").body(),
                            status_code=500)

    async def json_body(request: HttpRequest) -> dict:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(f"the request body is not valid JSON: {e}", None, "invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError("the request body must be a JSON object", None, "invalid_json")
        return body

    @app.get("/health")
    async def health():
        return {"status": "ok", **service.engine.load()}

    @app.get("/v1/models")
    async def models():
        return protocol.models_list(service.limits, service.created)

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        chat = getattr(tokenizers.base_tokenizer(service.tokenizer), "chat_template", None)
        return {"eos_token": service.decode([service.tokenizer.eot_id]), "bos_token": None, "pad_token": None,
                "chat_template": chat, "model_max_length": service.limits.max_context}

    @app.post("/tokenize")
    async def tokenize(request: HttpRequest):
        body = await json_body(request)
        if not isinstance(body.get("prompt"), str):
            raise ApiError("prompt must be a string", "prompt", "invalid_value")
        ids = encode_with_specials(service.tokenizer, body["prompt"])
        return {"tokens": ids, "count": len(ids), "max_model_len": service.limits.max_context}

    @app.post("/detokenize")
    async def detokenize(request: HttpRequest):
        body = await json_body(request)
        ids = body.get("tokens")
        if not isinstance(ids, list) or not all(isinstance(t, int) and 0 <= t < service.limits.vocab_size
                                                for t in ids):
            raise ApiError("tokens must be a list of token ids in the vocabulary", "tokens", "invalid_value")
        return {"prompt": service.decode(ids)}

    @app.post("/v1/completions")
    async def completions(request: HttpRequest):
        params = protocol.completion_params(await json_body(request), service.limits)
        prompt_ids = [list(p) if isinstance(p, tuple) else tokenizers.prompt_ids(service.tokenizer, p)
                      for p in params.prompts]
        max_tokens = [protocol.fit_max_tokens(len(ids), params.generation.max_tokens, service.limits)
                      for ids in prompt_ids]
        choices = service.submit(prompt_ids, max_tokens, params.generation, frozenset({service.tokenizer.eot_id}),
                                 score_prompt=params.echo and params.logprobs is not None)
        prompt_texts = [p if isinstance(p, str) else service.decode(p) for p in params.prompts]
        reply = {"id": protocol.new_id("cmpl"), "object": "text_completion", "created": protocol.now(),
                 "model": service.limits.model_name}
        if params.generation.stream:
            def chunk(index, text, finish_reason):
                if text is None:
                    return {**reply, "choices": [{"index": index, "text": prompt_texts[index], "logprobs": None,
                                                  "finish_reason": None}]} if params.echo else None
                return {**reply, "choices": [{"index": index, "text": text, "logprobs": None,
                                              "finish_reason": finish_reason}]}

            usage_chunk = reply if params.generation.include_usage else None
            return StreamingResponse(_stream(choices, chunk, usage_chunk), media_type="text/event-stream")
        try:
            await asyncio.gather(*(c.run() for c in choices))
        finally:
            for choice in choices:
                choice.request.cancel()
        return {**reply, "choices": [completion_choice(service, i, c, prompt_texts[i], params)
                                     for i, c in enumerate(choices)],
                "usage": protocol.usage(sum(map(len, prompt_ids)), sum(len(c.token_ids) for c in choices))}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest):
        params = protocol.chat_params(await json_body(request), service.limits)
        ids = service.chat.prompt({"messages": [*params.messages, {"role": "assistant", "content": ""}]})
        max_tokens = protocol.fit_max_tokens(len(ids), params.generation.max_tokens, service.limits)
        stop_ids = frozenset({service.chat.stop_id(), service.tokenizer.eot_id})
        choice, = service.submit([ids], [max_tokens], params.generation, stop_ids)
        reply = {"id": protocol.new_id("chatcmpl"), "created": protocol.now(), "model": service.limits.model_name}
        if params.generation.stream:
            def chunk(index, text, finish_reason):
                delta = {"role": "assistant", "content": ""} if text is None else {"content": text} if text else {}
                return {**reply, "object": "chat.completion.chunk",
                        "choices": [{"index": index, "delta": delta, "logprobs": None,
                                     "finish_reason": finish_reason}]}

            usage_chunk = {**reply, "object": "chat.completion.chunk"} if params.generation.include_usage else None
            return StreamingResponse(_stream([choice], chunk, usage_chunk), media_type="text/event-stream")
        try:
            await choice.run()
        finally:
            choice.request.cancel()
        return {**reply, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": choice.text.text},
                             "logprobs": None, "finish_reason": choice.finish_reason}],
                "usage": protocol.usage(len(ids), len(choice.token_ids))}

    return app
