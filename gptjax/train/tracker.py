"""An optional Weights & Biases tracker (train.wandb_project): the scalars a run writes to metrics.jsonl, logged to
a W&B run whose config is the run's whole config.

The run is named train.wandb_name or the workdir's name and grouped by train.wandb_group; its id is kept in
<workdir>/wandb_id.txt, so a resumed run continues the same W&B run (W&B keeps the first values of steps a resumed
run logs again). Its local files go to $WANDB_DIR, or <workdir>/wandb for a local workdir; WANDB_MODE=offline
logs without a network (`wandb sync` uploads later). Only process 0 logs.
"""
from __future__ import annotations

import os
import uuid
from typing import Any

import jax

from gptjax import config as config_lib
from gptjax import fileio
from gptjax.config import Config
from gptjax.errors import GptjaxError

WANDB_ID_FILE = "wandb_id.txt"


class WandbTracker:
    """Logs scalars to an open W&B run."""

    def __init__(self, wandb_run: Any):
        self.wandb_run = wandb_run

    def log(self, step: int, values: dict[str, float]) -> None:
        self.wandb_run.log(values, step=step)

    def close(self) -> None:
        self.wandb_run.finish()


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise GptjaxError("train.wandb_project is set but wandb is not installed: pip install 'gptjax[wandb]' "
                          "(or set train.wandb_project='')") from None
    return wandb


def wandb_run_id(workdir: Any, new_id: str) -> str:
    """The W&B run id kept in the workdir; `new_id` is written there (atomically) when it holds none yet."""
    path = fileio.as_path(workdir / WANDB_ID_FILE)
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    fileio.write_text_atomic(workdir / WANDB_ID_FILE, new_id + "\n")
    return new_id


def open_tracker(cfg: Config, workdir: Any) -> WandbTracker | None:
    """The run's W&B tracker, or None when train.wandb_project is "" or this is not process 0."""
    t = cfg.train
    if not t.wandb_project or jax.process_index() != 0:
        return None
    wandb = _import_wandb()
    local_dir = None if "WANDB_DIR" in os.environ or fileio.is_remote(workdir) else str(workdir)
    wandb_run = wandb.init(project=t.wandb_project, group=t.wandb_group or None,
                           name=t.wandb_name or fileio.as_path(workdir).name,
                           id=wandb_run_id(workdir, uuid.uuid4().hex[:8]), resume="allow",
                           config=config_lib.to_dict(cfg), dir=local_dir)
    return WandbTracker(wandb_run)
