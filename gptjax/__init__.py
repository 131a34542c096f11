"""gptjax: build GPT-style language models from scratch in JAX/Flax."""
from gptjax.api import LM, load
from gptjax.errors import GptjaxError

__version__ = "0.1.0"
__all__ = ["LM", "load", "GptjaxError", "__version__"]
