"""Shared fixtures: a session cache with the bundled Shakespeare prepared once, tiny configs, and a local GCS
emulator (tests/gcs_emulator.py) for gs:// workdirs."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptjax.testing.gcs import emulator_env, free_port, start_emulator  # noqa: F401  (free_port: for the tests)

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Read when gcsfs is imported: its experimental bucket-type lookup goes over gRPC, which the emulator does not serve
# (each lookup would wait 60 s for it).
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

REPO = Path(__file__).resolve().parent.parent
GCS_BUCKET = "gptjax-test"  # the bucket the `gcs` emulator holds


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gptjax_cache")
    os.environ["GPTJAX_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def shakespeare_dir(cache_dir) -> Path:
    from gptjax.config import DataConfig
    from gptjax.prepare.resolve import resolve_data

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


def run_on_fake_cpu_devices(script: str, devices: int = 8) -> dict:
    """Runs `script` (Python source) in a fresh process that sees `devices` fake CPU devices (a device count is fixed
    when jax starts) and returns the JSON object its last stdout line holds."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def dir_snapshot(path: Path) -> dict:
    """Every file below `path` with its size and content hash: equal snapshots mean nothing changed."""
    import hashlib

    if not path.exists():
        return {}
    return {str(p.relative_to(path)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(path.rglob("*")) if p.is_file()}


GPT2_FIXTURES = REPO / "tests" / "fixtures" / "gpt2"


@pytest.fixture(scope="session")
def gpt2_bpe_model(tmp_path_factory) -> dict:
    """A small random-init GPT-2-family model with the real GPT-2 BPE tokenizer (vocab 50257), as a native gptjax
    export (`gptjax` dir, for gptjax.load) and the HF transformers export of the same weights (`hf` dir, with
    tokenizer files): the pair the eval cross-checks against lm-evaluation-harness's HF backend use."""
    import flax.linen as nn

    from gptjax import export
    from gptjax.api import LM
    from gptjax.config import Config, ModelConfig
    from gptjax.data.tokenizer import Gpt2BpeAdapter
    from gptjax.interop import hf
    from gptjax.model.transformer import Transformer, init_params

    root = tmp_path_factory.mktemp("gpt2_bpe_model")
    model_cfg = ModelConfig(vocab_size=50257, block_size=256, n_layer=2, n_head=4, d_model=64, init_std=0.2)
    cfg = Config(name="gpt2_bpe_tiny", model=model_cfg)
    params = nn.unbox(init_params(Transformer(model_cfg), 0, 8))
    tokenizer = Gpt2BpeAdapter.from_dir(GPT2_FIXTURES)
    export.export_native(LM(cfg, params, tokenizer), root / "gptjax")
    hf.export_hf(cfg, params, tokenizer, root / "hf")
    return {"gptjax": root / "gptjax", "hf": root / "hf", "config": cfg}


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """A GCS emulator holding bucket GCS_BUCKET, this process's environment (and so its subprocesses') pointed at
    it; yields the fsspec filesystem."""
    pytest.importorskip("gcsfs")
    pytest.importorskip("gcp_storage_emulator")
    log = open(tmp_path_factory.mktemp("gcs") / "emulator.log", "w")
    try:
        proc, url = start_emulator(GCS_BUCKET, log)
    except RuntimeError as error:
        pytest.fail(str(error))
    env = emulator_env(url)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    import fsspec

    fsspec.config.set_conf_env(fsspec.config.conf)  # FSSPEC_GS_TOKEN
    try:
        yield fsspec.filesystem("gs")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        fsspec.config.conf.get("gs", {}).pop("token", None)
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def gcs_lines(fs, url: str) -> list[dict]:
    """The JSON lines of an object, read past fsspec's listing cache."""
    fs.invalidate_cache()
    return [json.loads(line) for line in fs.cat_file(url).decode().splitlines()]


def gcs_losses(fs, workdir: str) -> dict[int, float]:
    """The last logged loss per step of a gs:// workdir (a resumed run re-logs the steps after its checkpoint)."""
    return {r["step"]: r["loss"] for r in gcs_lines(fs, f"{workdir}/metrics.jsonl") if "loss" in r}


def same_params(a, b) -> None:
    """Two loaded LMs hold the same step and bit-identical params."""
    import jax
    import numpy as np

    assert a.step == b.step
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@dataclasses.dataclass
class FailAfterStep:
    """A hook that crashes the run after step `step` (its checkpoints written so far stay as they are)."""

    step: int

    def due(self, run, done: int) -> bool:
        return done == self.step

    def __call__(self, run, done: int, state) -> None:
        raise RuntimeError(f"crash after step {done}")
