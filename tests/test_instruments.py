"""The instruments of a run (issue 22): per-layer statistics and attention-logit maxima every train.stats_every steps
(computed by the step's stats twin, whose new state equals the plain step's bit for bit), profiler traces of
train.profile_steps, and the Weights & Biases tracker, checked in offline mode (no network) by reading the run's
.wandb log back."""
from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FailAfterStep, same_params, tiny_config, tiny_model, tiny_overrides

from gptjax.config import Config, TrainConfig
from gptjax.errors import GptjaxError
from gptjax.train.metrics import read_metrics
from gptjax.train.profile import profile_window


def _step_and_batch(scan_layers: bool, grad_accum: int = 1):
    from gptjax.parallel.mesh import make_mesh
    from gptjax.train.step import build_step

    cfg = Config(model=tiny_model(scan_layers=scan_layers),
                 train=TrainConfig(batch_size=8, grad_accum=grad_accum, steps=10, warmup_steps=1, lr=3e-3,
                                   min_lr=3e-4))
    step = build_step(cfg, make_mesh(cfg.mesh))
    tokens = np.random.default_rng(0).integers(0, cfg.model.vocab_size, (8, cfg.model.block_size + 1), np.int32)
    return step, step.to_global(step.format_batch(tokens))


def _rms(*arrays) -> float:
    return float(np.sqrt(sum(np.square(np.asarray(a, np.float64)).sum() for a in arrays) / sum(a.size for a in arrays)))


def test_stats_step_keeps_the_plain_steps_state_bit_for_bit():
    """Scanned layers and microbatches here; unrolled layers in the runs below (same losses and params)."""
    step, batch = _step_and_batch(scan_layers=True, grad_accum=2)
    start = step.init_state()
    before = jax.tree_util.tree_map(np.asarray, start.params)
    copy = lambda state: jax.tree_util.tree_map(jnp.copy, state)  # the steps donate their input state
    plain, plain_metrics = step.train(copy(start), batch)
    with_stats, metrics = step.train(copy(start), batch, with_stats=True)
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(with_stats)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(plain_metrics["loss"]) == float(metrics["loss"])
    assert not any(k.startswith("stats/") for k in plain_metrics)

    # each scanned layer has its own rows, named as unrolled layers are; each value is the RMS of its module's leaves
    after = jax.tree_util.tree_map(np.asarray, plain.params)
    old = [x[1] for x in jax.tree_util.tree_leaves(before["layers"]["attn"]["query"])]
    new = [x[1] for x in jax.tree_util.tree_leaves(after["layers"]["attn"]["query"])]
    assert float(metrics["stats/param_rms/layer_1/attn/query"]) == pytest.approx(_rms(*old), rel=1e-5)
    update_rms = _rms(*(b - a for a, b in zip(old, new)))
    assert float(metrics["stats/update_rms/layer_1/attn/query"]) == pytest.approx(update_rms, rel=1e-3)
    assert float(metrics["stats/update_ratio/layer_1/attn/query"]) == pytest.approx(update_rms / _rms(*old), rel=1e-3)
    assert float(metrics["stats/param_rms/embedding"]) == pytest.approx(_rms(before["embedding"]), rel=1e-5)
    kinds = ("param_rms", "grad_rms", "update_rms", "update_ratio")
    for i in range(2):
        for module in ("attn/query", "attn/out", "norm1"):
            assert all(float(metrics[f"stats/{kind}/layer_{i}/{module}"]) > 0 for kind in kinds)
        assert float(metrics[f"stats/attn_logit_max/layer_{i}"]) > 0
    assert not any("layers/" in k for k in metrics)


def test_attention_logit_max_sown_only_when_asked_alike_unrolled_and_scanned():
    import flax.linen as nn

    from gptjax.model.transformer import Transformer, init_params
    from gptjax.train.stats import attention_logit_max

    cap = 0.5
    unrolled_cfg = tiny_model(attn_softcap=cap, position="rope")
    scanned_cfg = dataclasses.replace(unrolled_cfg, scan_layers=True)
    unrolled, scanned = Transformer(unrolled_cfg), Transformer(scanned_cfg)
    params = nn.unbox(init_params(unrolled, 0, 8))
    layers = [params[f"layer_{i}"] for i in range(unrolled_cfg.n_layer)]
    stacked = {**{k: v for k, v in params.items() if not k.startswith("layer_")},
               "layers": jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)}
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 66, (2, 16)), jnp.int32)


    @jax.jit
    def forward(params, stacked, tokens):
        return (unrolled.apply({"params": params}, tokens),
                unrolled.apply({"params": params}, tokens, mutable=["intermediates"]),
                attention_logit_max(unrolled, params, (tokens, None, None)),
                attention_logit_max(scanned, stacked, (tokens, None, None)))

    plain, (asked, sown), by_layer, by_scanned_layer = forward(params, stacked, tokens)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(asked))
    assert set(sown) == {"intermediates"}
    assert sorted(by_layer) == ["stats/attn_logit_max/layer_0", "stats/attn_logit_max/layer_1"]
    assert all(0 < float(v) <= cap for v in by_layer.values())  # soft-capped logits stay under the cap
    for key, value in by_layer.items():
        assert float(by_scanned_layer[key]) == pytest.approx(float(value), rel=1e-5)


@pytest.mark.parametrize("spec, steps, error", [
    ("3:2", 4, None), ("4:1", 4, None), ("4:2", 4, "past the end"), ("0:2", 4, "START >= 1"),
    ("3", 4, "not START:N"), ("a:b", 4, "not START:N"), ("2:0", 4, "N >= 1"),
])
def test_profile_window(spec, steps, error):
    if error is None:
        window = profile_window(spec, steps)
        assert window.first == int(spec.split(":")[0]) and window.last <= steps
    else:
        with pytest.raises(GptjaxError, match=error):
            profile_window(spec, steps)


@pytest.mark.parametrize("window, expected", [
    ("19:5", "train.profile_steps='19:5' traces steps 19 to 23, past the end of the run (train.steps=20)"),
    ("5", "train.profile_steps='5' is not START:N"),
], ids=["past_the_end", "malformed"])
def test_bad_profile_window_is_one_line_exit_2_before_the_run_opens(tmp_path, capsys, cache_dir, window, expected):
    from gptjax.cli import main

    workdir = tmp_path / "run"
    argv = ["train", "--config", "experiments/shakespeare_char_cpu.py", "--workdir", str(workdir),
            *tiny_overrides(steps=20), f"--config.train.profile_steps={window}"]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gptjax: error: {expected}")
    assert not workdir.exists()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir, shakespeare_dir):
    """A plain 6-step run, and the same run with every instrument on, interrupted after step 4 and resumed."""
    from gptjax.train.loop import train

    root = tmp_path_factory.mktemp("instruments")
    plain = tiny_config(cache_dir, train={"steps": 6, "checkpoint_every": 2})
    instrumented = dataclasses.replace(plain, train=dataclasses.replace(
        plain.train, stats_every=2, profile_steps="2:2", wandb_project="gptjax-tests", wandb_group="g",
        tensorboard=True))
    train(plain, root / "plain", show_progress=False)
    with pytest.MonkeyPatch.context() as env:
        for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(root / "wandb"), "WANDB_SILENT": "true",
                           "WANDB_DISABLE_GIT": "true", "WANDB_API_KEY": ""}.items():
            env.setenv(key, value)
        (root / "wandb").mkdir()
        with pytest.raises(RuntimeError, match="crash after step 4"):
            train(instrumented, root / "instrumented", show_progress=False, hooks=[FailAfterStep(4)])
        first_id = (root / "instrumented" / "wandb_id.txt").read_text().strip()
        train(instrumented, root / "instrumented", show_progress=False)
    return {"plain": root / "plain", "instrumented": root / "instrumented", "wandb": root / "wandb",
            "first_id": first_id}


def test_stats_rows_on_their_steps_and_training_unchanged(runs):
    import gptjax

    plain, instrumented = read_metrics(runs["plain"]), read_metrics(runs["instrumented"])
    assert [row["loss"] for row in plain.values()] == [row["loss"] for row in instrumented.values()]
    same_params(gptjax.load(runs["plain"]), gptjax.load(runs["instrumented"]))
    stats_steps = [step for step, row in instrumented.items() if "stats/param_rms/embedding" in row]
    assert stats_steps == [2, 4, 6]
    row = instrumented[4]
    assert {"stats/grad_rms/layer_0/attn/query", "stats/update_ratio/layer_1/mlp/fc", "stats/param_rms/norm_f",
            "stats/update_rms/embedding", "stats/attn_logit_max/layer_1"} <= set(row)
    assert not any(k.startswith("stats/") for step in (1, 3, 5) for k in instrumented[step])
    assert not any(k.startswith("stats/") for k in plain[4])
    tags = _tensorboard_tags(runs["instrumented"] / "tensorboard")
    assert {"loss", "stats/param_rms/embedding", "stats/attn_logit_max/layer_0"} <= tags


def test_profile_trace_written(runs):
    traces = list((runs["instrumented"] / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert not (runs["plain"] / "profile").exists()


def test_wandb_offline_run_holds_the_logged_history_and_resumes_the_same_run(runs):
    run_id = (runs["instrumented"] / "wandb_id.txt").read_text().strip()
    assert run_id == runs["first_id"]
    logs = sorted(runs["wandb"].glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(logs) == 2  # the interrupted process and the resumed one, one W&B run
    history: dict[int, dict] = {}
    configs, names = [], set()
    for log in logs:
        for record in _wandb_records(log):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item}
                history.setdefault(int(items.pop("_step")), {}).update(items)
            elif kind == "run":
                names.add((record.run.display_name, record.run.run_group, record.run.project))
                configs.append({item.key: json.loads(item.value_json) for item in record.run.config.update})
    assert names == {("instrumented", "g", "gptjax-tests")}
    assert configs[0]["train"]["stats_every"] == 2 and configs[0]["model"]["n_layer"] == 2
    logged = read_metrics(runs["instrumented"])
    assert sorted(history) == sorted(logged)
    for step, row in logged.items():
        for key, value in row.items():
            assert history[step][key] == pytest.approx(value, rel=1e-6), (step, key)


def test_wandb_missing_is_one_error(tmp_path, cache_dir, shakespeare_dir, monkeypatch):
    import sys

    from gptjax.train.loop import train

    monkeypatch.setitem(sys.modules, "wandb", None)
    cfg = tiny_config(cache_dir, train={"steps": 2, "wandb_project": "p"})
    with pytest.raises(GptjaxError, match="wandb is not installed"):
        train(cfg, tmp_path / "run", show_progress=False)


def _wandb_records(path: Path):
    """The records of a W&B run log (.wandb): LevelDB's log format (32 KiB blocks of CRC'd, possibly split
    records) after a 7-byte ':W&B' header, each record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            yield wandb_internal_pb2.Record.FromString(pending)
            pending = b""


def _tensorboard_tags(logdir: Path) -> set[str]:
    """Every scalar tag in a TensorBoard log directory's event files (TFRecords of tensorboardX Event protos)."""
    from tensorboardX.proto import event_pb2

    tags = set()
    for path in logdir.glob("events.out.tfevents.*"):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            tags.update(value.tag for value in event.summary.value)
            pos += 12 + length + 4
    return tags


def test_ablation_runs_are_wandb_runs_named_by_variant_and_seed(tmp_path, cache_dir, shakespeare_dir):
    from gptjax import config as config_lib
    from gptjax.ablate.runner import Ablation, Sweep, plan_ablation

    def base(wandb_project: str):
        path = tmp_path / f"base_{wandb_project}.json"
        path.write_text(config_lib.to_json(tiny_config(cache_dir, train={"steps": 4, "wandb_project": wandb_project})))
        return config_lib.load_experiment(path)

    variants = {"ln": {}, "rms": {"model.norm": "rmsnorm"}}
    plan = plan_ablation(Ablation(base=base("abl"), variants=variants, sweeps={"rms": Sweep("train.lr", (1e-3, 3e-3))}),
                         tmp_path / "norms", seeds=2)
    names = {run.cfg.train.wandb_name: run.cfg.train.wandb_group for run in plan.runs}
    assert names == {"ln/seed0": "norms", "ln/seed1": "norms", "rms/train.lr=0.001/seed0": "norms",
                     "rms/train.lr=0.001/seed1": "norms", "rms/train.lr=0.003/seed0": "norms",
                     "rms/train.lr=0.003/seed1": "norms"}
    untracked = plan_ablation(Ablation(base=base(""), variants=variants), tmp_path / "plain", seeds=1)
    assert all(run.cfg.train.wandb_name == "" for run in untracked.runs)
