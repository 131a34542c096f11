"""lm-evaluation-harness adapter: a gptjax workdir or export as lm_eval model `gptjax`.

    gptjax-lm-eval --model gptjax --model_args path=runs/x --tasks hellaswag --batch_size 32
    python -m gptjax.interop.lm_eval --model gptjax --model_args path=runs/x,prefix_eot=true --tasks ...
    lm_eval.simple_evaluate(model="gptjax", model_args="path=runs/x", ...)   # after `import gptjax.interop.lm_eval`

lm-eval 0.4.x finds models only in its own registry (`lm_eval/models/__init__.py` MODEL_MAPPING; no plugin
discovery), so the model is registered by importing this module: `gptjax-lm-eval` / `python -m
gptjax.interop.lm_eval` import it and then run lm-eval's own CLI with the same arguments. setup.py also declares it
under the `lm_eval.models` entry-point group that lm-eval's plugin registration (upstream PR #4013) reads, so a
release with it finds `lm_eval --model gptjax` without this wrapper.

Scoring is gptjax.api.LM's loglikelihood / loglikelihood_rolling / generate_until (gptjax/eval/requests.py), whose
definitions equal lm-eval's HF backend (tests/test_eval_requests.py).
"""
from __future__ import annotations

import lm_eval.models  # noqa: F401  (the built-in models: lm-eval imports them only while its registry is empty)
from lm_eval.api.model import LM as HarnessLM
from lm_eval.api.registry import register_model

import gptjax
from gptjax.errors import GptjaxError

DEFAULT_BATCH_SIZE = 32


def parse_batch_size(batch_size: int | str | None, max_batch_size: int | None = None) -> int:
    """lm-eval's batch_size argument as rows per batch: an int, or "auto"/"auto:N" -> max_batch_size or 32
    (gptjax batches are fixed-shape, so there is nothing to probe)."""
    if batch_size is None or (isinstance(batch_size, str) and batch_size.startswith("auto")):
        return int(max_batch_size or DEFAULT_BATCH_SIZE)
    try:
        rows = int(batch_size)
    except ValueError:
        raise GptjaxError(f"lm-eval batch_size={batch_size!r} is not an integer or 'auto'; pass e.g. "
                          "--batch_size 32") from None
    if rows < 1:
        raise GptjaxError(f"lm-eval batch_size={rows} must be >= 1")
    return rows


@register_model("gptjax")
class GptjaxHarnessLM(HarnessLM):
    """model_args: path=DIR (training workdir or export), step=N (a workdir's checkpoint; default latest),
    prefix_eot=true (put <|endoftext|> before every context; default: only before an empty one, as lm-eval's HF
    backend). `device` is ignored: JAX places the model on its default backend."""

    def __init__(self, path: str, batch_size: int | str | None = DEFAULT_BATCH_SIZE, step: int | None = None,
                 prefix_eot: bool = False, max_batch_size: int | None = None, device: str | None = None):
        super().__init__()
        self.path = str(path)
        self.lm = gptjax.load(path, step)
        self.rows_per_batch = parse_batch_size(batch_size, max_batch_size)
        self.prefix_eot = bool(prefix_eot)
        self.n_truncated = 0  # loglikelihood requests whose context was cut from the left, over this model's life

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        args = [tuple(r.args) for r in requests]
        results = self.lm.loglikelihood(args, self.rows_per_batch, progress=not disable_tqdm,
                                        prefix_eot=self.prefix_eot)
        self.n_truncated += results.n_truncated
        for pair, result in zip(args, results):
            self.cache_hook.add_partial("loglikelihood", pair, result)
        return list(results)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        texts = [r.args[0] for r in requests]
        totals = self.lm.loglikelihood_rolling(texts, self.rows_per_batch, progress=not disable_tqdm)
        for text, total in zip(texts, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        args = [(r.args[0], dict(r.args[1])) for r in requests]
        outputs = self.lm.generate_until(args, self.rows_per_batch, progress=not disable_tqdm)
        for (context, kwargs), text in zip(args, outputs):
            self.cache_hook.add_partial("generate_until", (context, kwargs), text)
        return outputs

    def get_model_info(self) -> dict:
        return {"model_path": self.path, "model_step": self.lm.step,
                "loglikelihood_truncated_requests": self.n_truncated}


def main() -> None:
    """lm-eval's own command line, with the `gptjax` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
