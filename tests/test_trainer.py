"""The reusable trainer: build_step with an injected objective, frozen params and a trainable mask, loss-spike
skipping, train.init_from, save failures, ahead-of-time lowering."""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config

from gptjax.errors import GptjaxError
from gptjax.model.losses import token_nll
from gptjax.parallel.mesh import make_mesh
from gptjax.train.objectives import OBJECTIVES, lm_batch
from gptjax.train.step import build_step


def cfg_for(cache_dir, **train):
    return tiny_config(cache_dir, model={"vocab_size": 66}, train={"warmup_steps": 0, **train})


def batches(n: int, seed: int = 0, batch: int = 8, length: int = 17):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 65, (batch, length), dtype=np.int32) for _ in range(n)]


def run_steps(step, state, host_batches):
    losses = []
    for b in host_batches:
        state, metrics = step.train(state, step.to_global(step.format_batch(b)))
        losses.append(float(metrics["loss"]))
    return state, losses


def test_config_objectives_and_trainer_objectives_agree():
    from gptjax import config

    assert set(config.OBJECTIVES) == set(OBJECTIVES)


def test_lm_batch_weights_follow_documents():
    tokens = np.arange(12, dtype=np.int32).reshape(2, 6)
    assert lm_batch(tokens)["loss_weights"].tolist() == [[1] * 5] * 2
    segments = np.array([[1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1]], np.int32)
    weights = lm_batch({"tokens": tokens, "segment_ids": segments, "positions": segments})["loss_weights"]
    assert weights.tolist() == [[1, 0, 1, 1, 0], [1, 1, 1, 1, 1]]


def test_loss_weights_decide_which_targets_count(cache_dir):
    """The objective counts exactly the weighted targets: the step's loss equals a direct masked NLL."""
    cfg = cfg_for(cache_dir)
    step = build_step(cfg, make_mesh(cfg.mesh))
    state = step.init_state()
    tokens = batches(1)[0]
    weights = np.zeros((8, 16), np.float32)
    weights[:, 5:9] = 1.0
    sums = step.evaluate(state.params, None, step.to_global({"tokens": tokens, "loss_weights": weights}))
    logits = step.model.apply({"params": state.params}, jnp.asarray(tokens[:, :-1]))
    nll = np.asarray(token_nll(logits, jnp.asarray(tokens[:, 1:]))[0])
    assert float(sums["weight"]) == 32.0
    np.testing.assert_allclose(float(sums["loss"]), nll[:, 5:9].sum(), rtol=1e-5)


def test_a_trainable_mask_freezes_params_bit_for_bit_and_keeps_no_optimizer_state_for_them(cache_dir):
    cfg = cfg_for(cache_dir, lr=1e-2)
    mesh = make_mesh(cfg.mesh)
    probe = build_step(cfg, mesh)
    trainable = {k: jax.tree_util.tree_map(lambda _: k != "embedding", v)
                 for k, v in probe.abstract_state.params.items()}
    step = build_step(cfg, mesh, trainable=trainable)
    start = step.init_state()
    before = jax.tree_util.tree_map(np.asarray, start.params)
    state, losses = run_steps(step, start, batches(5))
    assert losses[-1] < losses[0]
    np.testing.assert_array_equal(np.asarray(state.params["embedding"]), before["embedding"])
    changed = [not np.array_equal(np.asarray(a), b) for a, b in
               zip(jax.tree_util.tree_leaves({k: v for k, v in state.params.items() if k != "embedding"}),
                   jax.tree_util.tree_leaves({k: v for k, v in before.items() if k != "embedding"}))]
    assert all(changed)
    adam = [s for s in jax.tree_util.tree_leaves(state.opt_state,
                                                 is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)]
    assert len(adam) == 1
    assert isinstance(adam[0].mu["embedding"], optax.MaskedNode), "frozen params must not carry Adam moments"
    assert adam[0].mu["norm_f"]["scale"].shape == before["norm_f"]["scale"].shape


@dataclasses.dataclass(frozen=True)
class MatchReference:
    """Squared distance between the policy's and a frozen reference model's logits (what DPO/distillation need)."""

    name: str = "match"

    def __call__(self, params, frozen, model, batch, rng):
        inputs = batch["tokens"][:, :-1]
        policy = model.apply({"params": params}, inputs)
        reference = model.apply({"params": frozen}, inputs)
        weights = batch["loss_weights"]
        distance = (jnp.square(policy - reference).mean(-1) * weights).sum()
        return distance, {"loss": distance, "weight": weights.sum()}


def test_frozen_params_ride_in_the_state_untouched_and_an_injected_objective_sees_them(cache_dir):
    cfg = cfg_for(cache_dir, lr=1e-3, schedule="constant")
    mesh = make_mesh(cfg.mesh)
    probe = build_step(cfg, mesh)
    reference = probe.init_state().params
    step = build_step(cfg, mesh, objective=MatchReference(), frozen_example=reference)
    state = step.init_state(frozen=reference)
    assert step.evaluate(state.params, state.frozen, step.to_global(step.format_batch(batches(1)[0])))["loss"] == 0.0
    noisy = jax.tree_util.tree_map(lambda p: p + 0.05, state.params)
    state = state.replace(params=noisy)
    state, losses = run_steps(step, state, batches(10))
    assert losses[-1] < 0.5 * losses[0]
    for a, b in zip(jax.tree_util.tree_leaves(state.frozen), jax.tree_util.tree_leaves(reference)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_loss_spike_skips_the_update_and_is_counted(cache_dir):
    cfg = cfg_for(cache_dir, lr=1e-2, spike_factor=1.5, schedule="constant")
    step = build_step(cfg, make_mesh(cfg.mesh))
    memorized = batches(1, seed=1)[0]
    state, losses = run_steps(step, step.init_state(), [memorized] * 40)
    assert losses[-1] < 0.5 * losses[0] and int(state.skipped_steps) == 0
    params_before = jax.tree_util.tree_map(np.asarray, state.params)
    surprise = batches(1, seed=2)[0]
    state, metrics = step.train(state, step.to_global(step.format_batch(surprise)))
    assert float(metrics["loss"]) > 1.5 * losses[-1]
    assert int(metrics["skipped_steps"]) == 1 and int(state.step) == 41
    for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(params_before)):
        np.testing.assert_array_equal(np.asarray(a), b)
    state, metrics = step.train(state, step.to_global(step.format_batch(memorized)))
    assert int(metrics["skipped_steps"]) == 1


def test_init_from_starts_from_another_runs_params_with_a_fresh_optimizer(tmp_path, cache_dir):
    import gptjax
    from gptjax.train.loop import train

    base = cfg_for(cache_dir, steps=8)
    train(base, tmp_path / "base", show_progress=False)
    source = gptjax.load(tmp_path / "base")
    tuned = dataclasses.replace(base, train=dataclasses.replace(base.train, init_from=str(tmp_path / "base"), steps=1,
                                                                lr=1e-9, min_lr=0.0, seed=5))
    train(tuned, tmp_path / "tuned", show_progress=False)
    result = gptjax.load(tmp_path / "tuned")
    assert result.step == 1
    for a, b in zip(jax.tree_util.tree_leaves(result.params), jax.tree_util.tree_leaves(source.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7)
    record = json.loads((tmp_path / "tuned" / "record.json").read_text())
    assert record["init_from"] == {"path": str((tmp_path / "base").absolute()), "step": 8}

    wider = dataclasses.replace(tuned, model=dataclasses.replace(tuned.model, d_model=64))
    with pytest.raises(GptjaxError, match=r"does not fit this model: param .* is shape"):
        train(wider, tmp_path / "wider", show_progress=False)
    with pytest.raises(GptjaxError, match="neither a training workdir"):
        train(dataclasses.replace(tuned, train=dataclasses.replace(tuned.train, init_from=str(tmp_path / "nothing"))),
              tmp_path / "orphan", show_progress=False)


def test_a_failed_save_is_one_clear_error_and_earlier_checkpoints_stay_intact(tmp_path, cache_dir, monkeypatch):
    import orbax.checkpoint as ocp

    import gptjax
    from gptjax.train.loop import train

    real_save = ocp.CheckpointManager.save

    def failing_save(self, step, *args, **kwargs):
        if step >= 6:
            raise OSError(28, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
    cfg = cfg_for(cache_dir, steps=8, checkpoint_every=3)
    with pytest.raises(GptjaxError) as error:
        train(cfg, tmp_path / "run", show_progress=False)
    message = str(error.value)
    assert "saving checkpoint step 6" in message and "No space left on device" in message
    assert "the latest intact checkpoint is step 3" in message and "\n" not in message
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    assert gptjax.load(tmp_path / "run").step == 3
    assert train(cfg, tmp_path / "run", show_progress=False)["step"] == 8


def test_the_train_step_lowers_ahead_of_time_from_abstract_inputs(cache_dir):
    cfg = cfg_for(cache_dir, grad_accum=2)
    step = build_step(cfg, make_mesh(cfg.mesh))
    compiled = step.lower_train().compile()
    assert compiled.memory_analysis() is not None
    assert set(step.abstract_batch(8)) == {"tokens", "loss_weights"}


def test_eval_tasks_are_scored_during_training_and_logged(tmp_path, cache_dir):
    from conftest import REPO, run_cli, tiny_overrides

    fixtures = REPO / "tests" / "fixtures" / "eval"
    args = tiny_overrides(steps=4, **{"train.eval_every": 2, "data.dataset": "shakespeare", "model.block_size": 96,
                                      "data.tokenizer": "sentencepiece", "data.vocab_size": 512,
                                      "train.eval_tasks": "hellaswag:8,lambada:8", "train.eval_data": str(fixtures)})
    proc = run_cli(["train", "--config", "experiments/shakespeare_char_cpu.py", "--workdir", str(tmp_path / "run"),
                    *args])
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scored = {r["step"]: r for r in records if "hellaswag/acc" in r}
    assert sorted(scored) == [2, 4]
    for record in scored.values():
        assert 0.0 <= record["hellaswag/acc"] <= 1.0 and record["lambada/perplexity"] > 1.0
        assert record["hellaswag/acc"] * 8 == round(record["hellaswag/acc"] * 8)  # 8 items scored

    missing = run_cli(["train", "--config", "experiments/shakespeare_char_cpu.py", "--workdir", str(tmp_path / "bad"),
                       *tiny_overrides(steps=2, **{"train.eval_tasks": "hellaswag", "train.eval_data": str(tmp_path)})])
    assert missing.returncode == 2 and "hellaswag" in missing.stderr
    assert (tmp_path / "bad" / "metrics.jsonl").read_text() == "", "the data is checked before any step"


def test_a_failing_save_at_close_never_masks_the_error_that_stopped_the_run(tmp_path, cache_dir, monkeypatch, capfd):
    from gptjax import checkpoint
    from gptjax.train.loop import train

    def failing_close(self):
        self.manager.close()
        raise GptjaxError("saving checkpoint step 9 failed (OSError: No space left on device)")

    monkeypatch.setattr(checkpoint.Checkpoints, "close", failing_close)
    diverging = cfg_for(cache_dir, steps=5, lr=1e30, grad_clip=0.0, schedule="constant", checkpoint_every=1)
    with pytest.raises(GptjaxError, match="not finite or give a non-finite loss"):
        train(diverging, tmp_path / "run", show_progress=False)
    assert "gptjax: warning: saving checkpoint step 9 failed" in capfd.readouterr().err
