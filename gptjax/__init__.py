"""gptjax: build GPT-style language models from scratch in JAX/Flax."""
from gptjax.errors import GptjaxError

__version__ = "0.1.0"
__all__ = ["LM", "load", "GptjaxError", "__version__"]


def __getattr__(name: str):
    """`gptjax.load` / `gptjax.LM` import jax on first use, so data-pipeline workers that import gptjax stay light."""
    if name in ("LM", "load"):
        from gptjax import api

        return getattr(api, name)
    raise AttributeError(f"module 'gptjax' has no attribute {name!r}")
