"""Shared fixtures: a session cache with the bundled Shakespeare prepared once, and tiny configs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gptjax_cache")
    os.environ["GPTJAX_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def shakespeare_dir(cache_dir) -> Path:
    from gptjax.config import DataConfig
    from gptjax.data.prepare import resolve_data

    return resolve_data(DataConfig(cache_dir=str(cache_dir)))


def tiny_model(**overrides):
    from gptjax.config import ModelConfig

    base = dict(vocab_size=66, block_size=16, n_layer=2, n_head=4, d_model=32, window=5, stride=4)
    base.update(overrides)
    return ModelConfig(**base)


def tiny_config(cache_dir: Path, model: dict | None = None, train: dict | None = None, mesh: dict | None = None):
    from gptjax.config import Config, DataConfig, MeshConfig, TrainConfig

    model_cfg = tiny_model(**{"vocab_size": 0, **(model or {})})
    train_cfg = TrainConfig(**{"batch_size": 8, "steps": 20, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2,
                               "eval_every": 1000, "eval_batches": 2, "log_every": 1, "checkpoint_every": 1000,
                               "tensorboard": False, **(train or {})})
    return Config(name="tiny", model=model_cfg, data=DataConfig(cache_dir=str(cache_dir)), train=train_cfg,
                  mesh=MeshConfig(**(mesh or {})))


def tiny_overrides(steps: int = 20, **extra) -> list[str]:
    """CLI overrides turning experiments/shakespeare_char_cpu.py into a seconds-long run."""
    values = {"model.block_size": 16, "model.n_layer": 2, "model.n_head": 2, "model.d_model": 32,
              "train.batch_size": 4, "train.steps": steps, "train.warmup_steps": 2, "train.eval_every": 10,
              "train.eval_batches": 2, "train.log_every": 1, "train.checkpoint_every": 1000,
              "train.tensorboard": False, **extra}
    return [f"--config.{k}={v}" for k, v in values.items()]


def run_cli(args: list[str], env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "gptjax", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def dir_snapshot(path: Path) -> dict:
    """Every file below `path` with its size and content hash: equal snapshots mean nothing changed."""
    import hashlib

    if not path.exists():
        return {}
    return {str(p.relative_to(path)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(path.rglob("*")) if p.is_file()}
