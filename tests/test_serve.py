"""`gptjax serve`: the OpenAI-compatible server checked with real clients against a tiny random GPT-2-BPE model.

The server runs in-process (uvicorn in a thread on 127.0.0.1, a free port). Checked: the `openai` client's
completions, chat and streaming; greedy output equal to `LM.generate`; 32 concurrent mixed-length requests (greedy
and seeded sampling) equal to each sent alone; lm-eval's `local-completions` model (its remote tokenizer served here)
giving `gptjax eval`'s per-choice log-likelihoods; bad input answered 400 with OpenAI's error body while the server
keeps serving; a full queue answered 429; shutdown letting in-flight requests finish, and cancelling after its
timeout.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import GPT2_FIXTURES, free_port, run_cli

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "eval"
CONTEXT = 128
MODEL_NAME = "tiny-gpt2"
WORDS = ("the cat sat on a mat while rain fell over quiet hills and old friends told long stories of the sea "
         "under bright stars").split()


@pytest.fixture(scope="module")
def lm():
    import flax.linen as nn

    from gptjax.api import LM
    from gptjax.config import Config, ModelConfig
    from gptjax.data.tokenizer import Gpt2BpeAdapter
    from gptjax.model.transformer import Transformer, init_params

    cfg = Config(name="tiny_serve", model=ModelConfig(vocab_size=50257, block_size=CONTEXT, n_layer=2, n_head=4,
                                                      d_model=64, init_std=0.2))
    return LM(cfg, nn.unbox(init_params(Transformer(cfg.model), 0, 8)), Gpt2BpeAdapter.from_dir(GPT2_FIXTURES))


class Running:
    """A server on 127.0.0.1 in a thread: its URL, its service (engine inside) and a way to stop it."""

    def __init__(self, lm, **settings):
        import uvicorn

        from gptjax.serve.app import ServeSettings, create_app

        self.app = create_app(lm, ServeSettings(MODEL_NAME, **{"max_context": CONTEXT, **settings}))
        self.service = self.app.state.service
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=settings.get("shutdown_timeout", 30)))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def server(lm):
    running = Running(lm, max_batch=8, max_queue=64, warm_up=True)
    yield running
    running.stop()


def post(server: Running, path: str, body: dict | str, timeout: float = 60) -> httpx.Response:
    content = body if isinstance(body, str) else None
    return httpx.post(server.url + path, json=None if content else body, content=content, timeout=timeout,
                      headers={"content-type": "application/json"})


def complete(server: Running, prompt, max_tokens: int, **extra) -> dict:
    response = post(server, "/v1/completions", {"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens,
                                                "temperature": 0, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def openai_client(server: Running):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_openai_client_completions_chat_and_streaming(server, lm):
    client = openai_client(server)
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]

    completion = client.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=12, temperature=0)
    assert completion.choices[0].text == lm.generate("Once upon a time", 12, temperature=0)[0]
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 12

    streamed = client.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=12, temperature=0,
                                         stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == completion.choices[0].text

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    chat = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=10, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=10, temperature=0,
                                            stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == chat.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == chat.choices[0].finish_reason

    # the chat prompt is the `chat` template's (this model has no template of its own)
    from gptjax.finetune.batches import RecordEncoder

    ids = RecordEncoder("chat", lm.tokenizer).prompt({"messages": [*messages, {"role": "assistant", "content": ""}]})
    expected = lm.tokenizer.decode(lm.generate_ids([ids], 10, temperature=0)[0])
    assert chat.choices[0].message.content == expected


def test_stop_strings_and_seeded_sampling(server, lm):
    full = complete(server, "the cat", 20)["choices"][0]["text"]
    stop = full[5:8]
    cut = complete(server, "the cat", 20, stop=[stop])["choices"][0]
    assert cut["text"] == full[: full.find(stop)] and cut["finish_reason"] == "stop"
    sampled = [complete(server, "the cat", 16, temperature=0.9, top_p=0.8, seed=7)["choices"][0]["text"]
               for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_32_concurrent_mixed_requests_equal_each_alone(server, lm):
    requests = []
    for i in range(32):
        prompt = " ".join(WORDS[(i * 3) % len(WORDS):][: 1 + (i * 7) % 19]) * (1 + i % 3)
        extra = {"temperature": 0.8, "top_p": 0.9 if i % 8 == 3 else 1.0, "seed": i} if i % 4 == 3 else {}
        requests.append((prompt, 4 + (i * 5) % 29, extra))
    alone = [complete(server, p, n, **extra)["choices"][0]["text"] for p, n, extra in requests]
    steps_before = server.service.engine.steps
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda r: complete(server, r[0], r[1], **r[2])["choices"][0]["text"], requests))
    assert together == alone
    assert server.service.engine.steps - steps_before < sum(n for _, n, _ in requests) / 2, "no batching happened"
    greedy = [i for i, (_, _, extra) in enumerate(requests) if not extra][:4]
    for i in greedy:
        prompt, n, _ = requests[i]
        assert together[i] == lm.generate(prompt, n, temperature=0)[0]


def test_lm_eval_local_completions_matches_gptjax_eval(server, lm):
    pytest.importorskip("lm_eval")
    pytest.importorskip("tenacity", reason="lm-eval's API models need lm_eval[api]")
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from gptjax.eval import suite
    from gptjax.eval.tasks import load_task

    def fits(item) -> bool:
        return all(len(lm.tokenizer.encode(c + x)) < CONTEXT - 2 for c, x in suite.choice_requests(item))

    client = LocalCompletionsAPI(base_url=server.url + "/v1/completions", model=MODEL_NAME, max_length=CONTEXT)
    assert client.tokenizer_backend == "remote"  # found on this server: nothing to download
    for name in ("hellaswag", "arc_easy"):
        task = load_task(name, FIXTURES, limit=40)
        task = dataclasses.replace(task, items=[item for item in task.items if fits(item)][:3])
        assert len(task.items) == 3
        mine = suite.run_task(lm, task, progress=False).samples
        pairs = [pair for item in task.items for pair in suite.choice_requests(item)]
        instances = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
        theirs = client.loglikelihood(instances, disable_tqdm=True)
        expected = [ll for sample in mine for ll in sample["loglikelihoods"]]
        greedy = [g for sample in mine for g in sample["is_greedy"]]
        assert [ll for ll, _ in theirs] == pytest.approx(expected, abs=1e-4)
        assert [g for _, g in theirs] == greedy


def test_echo_logprobs_score_the_prompt(server, lm):
    ids = lm.tokenizer.encode("the cat sat on a mat")
    choice = complete(server, ids, 0, echo=True, logprobs=2)["choices"][0]
    logprobs = choice["logprobs"]
    assert choice["text"] == "the cat sat on a mat"
    assert logprobs["token_logprobs"][0] is None and len(logprobs["tokens"]) == len(ids)
    assert logprobs["token_logprobs"][1:] == pytest.approx(lm.token_logprobs([ids])[0].tolist(), abs=1e-5)
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"][1:])


@pytest.mark.parametrize("body, param", [
    ('{"model": "tiny-gpt2", "prompt": "hi",', None),
    ({"model": "other-model", "prompt": "hi"}, "model"),
    ({"model": MODEL_NAME, "prompt": "hi", "max_tokens": CONTEXT}, "max_tokens"),
    ({"model": MODEL_NAME, "prompt": "hi", "temperature": -0.5}, "temperature"),
    ({"model": MODEL_NAME, "prompt": [5, 50257, 7]}, "prompt"),
    ({"model": MODEL_NAME, "prompt": [[1, 2], [-1]]}, "prompt"),
    ({"model": MODEL_NAME, "messages": []}, "messages"),
])
def test_bad_input_is_400_and_the_server_keeps_serving(server, body, param):
    path = "/v1/chat/completions" if isinstance(body, dict) and "messages" in body else "/v1/completions"
    response = post(server, path, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and error["message"]
    assert complete(server, "hi", 2)["choices"][0]["finish_reason"] == "length"


def test_full_queue_is_429(lm, monkeypatch):
    running = Running(lm, max_batch=1, max_queue=1)
    engine = running.service.engine
    gate = threading.Event()
    admit = engine._admit
    monkeypatch.setattr(engine, "_admit", lambda slot, request: (gate.wait(30), admit(slot, request)))
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(complete, running, "one", 3)
            while not engine.admitting:
                time.sleep(0.01)
            second = pool.submit(complete, running, "two", 3)
            while len(engine.waiting) < 1:
                time.sleep(0.01)
            refused = post(running, "/v1/completions", {"model": MODEL_NAME, "prompt": "three", "max_tokens": 3})
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "rate_limit_exceeded"
            gate.set()
            assert first.result()["choices"][0]["finish_reason"] == "length"
            assert second.result()["choices"][0]["finish_reason"] == "length"
    finally:
        gate.set()
        running.stop()


def test_shutdown_finishes_in_flight_requests(lm):
    running = Running(lm, max_batch=2, max_queue=8)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(complete, running, f"request {i}", 100) for i in range(4)]
        while running.service.engine.steps == 0:
            time.sleep(0.01)
        running.stop()
        results = [f.result() for f in futures]
    assert [r["choices"][0]["finish_reason"] for r in results] == ["length"] * 4
    assert all(r["usage"]["completion_tokens"] == 100 for r in results)
    assert not running.service.engine.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(running.url + "/health", timeout=5)


def test_engine_stop_cancels_what_is_left_after_its_timeout(lm):
    from gptjax.serve.engine import Engine, EngineStopped, FinishEvent, Request, Sampling

    engine = Engine(lm.model, lm.params, max_batch=1, max_context=CONTEXT, max_queue=4)
    finished: list[str] = []
    on_event = lambda event: finished.append(event.reason) if isinstance(event, FinishEvent) else None
    engine.start()
    engine.submit([Request([1, 2, 3], 120, Sampling(), frozenset(), on_event) for _ in range(3)])
    engine.stop(timeout=0)
    assert finished == ["cancelled"] * 3
    with pytest.raises(EngineStopped):
        engine.submit([Request([1], 1, Sampling(), frozenset(), on_event)])


def test_cli_refuses_bad_workdir_and_flags_in_one_line(tmp_path):
    from gptjax.cli.serve import add_arguments, check_arguments
    from gptjax.errors import GptjaxError

    missing = run_cli(["serve", "--workdir", str(tmp_path / "nothing")])
    assert missing.returncode == 2 and missing.stderr.startswith("gptjax: error:")
    assert missing.stderr.strip().count("\n") == 0
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for flags in (["--max-batch", "0"], ["--max-context", "500"], ["--max-queue", "-1"]):
        with pytest.raises(GptjaxError, match=flags[0]):
            check_arguments(parser.parse_args(["--workdir", "x", *flags]), CONTEXT)


def test_cli_serves_an_export_and_stops_cleanly_on_sigterm(lm, tmp_path):
    """`gptjax serve` as a user starts it: a native export, a real port; SIGTERM shuts it down cleanly (uvicorn then
    re-raises the signal, so the exit status says SIGTERM, as process managers expect)."""
    import os
    import signal
    import subprocess
    import sys

    from gptjax import export

    export.export_native(lm, tmp_path / "tiny")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "gptjax", "serve", "--workdir", str(tmp_path / "tiny"), "--port",
                                str(port), "--max-batch", "2", "--no-warm-up"], cwd=Path(__file__).parent.parent,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "gptjax serve did not come up"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        models = httpx.get(url + "/v1/models", timeout=10).json()
        assert [model["id"] for model in models["data"]] == ["tiny"]
        response = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "the cat", "max_tokens": 5,
                                                              "temperature": 0}, timeout=120)
        assert response.status_code == 200, response.text
        expected = lm.generate(["the cat"], max_new_tokens=5, temperature=0.0)[0]
        assert response.json()["choices"][0]["text"] == expected
    finally:
        os.kill(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode in (0, -signal.SIGTERM), output[-2000:]
    assert "Application shutdown complete" in output and "Traceback" not in output, output[-2000:]
