"""The config system: declared ranges on every field, saved configs as --config, experiment-file errors with
their line, and which fields a resumed run may change."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from gptjax import config as config_lib
from gptjax.config import (
    Bounds,
    Change,
    Config,
    DataConfig,
    MeshConfig,
    ModelConfig,
    PrepareConfig,
    Resume,
    TrainConfig,
    apply_overrides,
    load_experiment,
    resume_changes,
    to_config,
    to_dict,
    to_json,
    validate,
)
from gptjax.errors import GptjaxError

CHECKED_SECTIONS = (ModelConfig, TrainConfig, MeshConfig, DataConfig, PrepareConfig)


def replaced(section: Any, dotted: str, value: Any) -> Any:
    """`section` with the field at `dotted` (e.g. "train.lr") set to `value`, every level copied."""
    head, _, rest = dotted.partition(".")
    new = replaced(getattr(section, head), rest, value) if rest else value
    return dataclasses.replace(section, **{head: new})


def outside(bounds: Bounds, integer: bool) -> list[float]:
    """Values just past each end of `bounds` (and non-finite ones for floats), none of them a sentinel."""
    step = 1 if integer else 0.5
    values = [] if integer else [float("nan"), float("inf"), float("-inf")]
    if bounds.lo is not None:
        values.append(bounds.lo if bounds.lo_open else bounds.lo - step)
    if bounds.hi is not None:
        values.append(bounds.hi if bounds.hi_open else bounds.hi + step)
    return [v for v in values if v not in bounds.also]


RANGED = [leaf for leaf in config_lib.leaf_fields() if leaf.spec.bounds is not None]
OUT_OF_RANGE = [(leaf.key, value, leaf.spec.bounds) for leaf in RANGED
                for value in outside(leaf.spec.bounds, isinstance(leaf.value, int))]
CHOICES = [leaf for leaf in config_lib.leaf_fields() if leaf.spec.options is not None]


# --- declared ranges -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("section", CHECKED_SECTIONS, ids=lambda c: c.__name__)
def test_every_numeric_field_declares_its_range(section):
    hints = get_type_hints(section)
    numeric = [f for f in dataclasses.fields(section) if hints[f.name] in (int, float)]
    assert numeric
    undeclared = [f.name for f in numeric if config_lib.field_spec(f).bounds is None]
    assert undeclared == [], f"{section.__name__} fields without a declared range: {undeclared}"


def test_prepare_fields_name_their_prepare_flag():
    leaves = {leaf.key: leaf for leaf in config_lib.leaf_fields(DataConfig(), "data.")}
    assert leaves["data.prepare.dedup"].spec.flag == "--dedup" and leaves["data.tokenizer"].spec.flag == "--tokenizer"
    bad = leaves["data.prepare.shard_tokens"]._replace(value=0)
    assert (config_lib.declared_violation(bad, name_flag=True)
            == "data.prepare.shard_tokens=0 (--shard-tokens) must be >= 1")
    assert config_lib.declared_violation(bad) == "data.prepare.shard_tokens=0 must be >= 1"


def test_defaults_are_valid():
    validate(Config())


@pytest.mark.parametrize("key,value,bounds", OUT_OF_RANGE, ids=lambda x: str(x))
def test_out_of_range_value_names_key_value_and_range(key, value, bounds):
    with pytest.raises(GptjaxError) as err:
        validate(replaced(Config(), key, value))
    message = str(err.value)
    assert f"{key}={value!r} must be {bounds}" in message
    assert f"--config.{key}=" in message and "\n" not in message


@pytest.mark.parametrize("leaf", CHOICES, ids=lambda leaf: leaf.key)
def test_choice_outside_its_options_names_key_and_options(leaf):
    with pytest.raises(GptjaxError) as err:
        validate(replaced(Config(), leaf.key, "no-such-option"))
    assert f"{leaf.key}='no-such-option' is not one of {', '.join(leaf.spec.options)}" in str(err.value)


def test_issue_ranges_are_declared():
    spec = {leaf.key: leaf.spec.bounds for leaf in RANGED}
    assert str(spec["train.eval_batches"]) == ">= 1"
    assert str(spec["train.beta1"]) == str(spec["train.beta2"]) == "in [0, 1)"
    assert str(spec["train.lr"]) == "> 0"
    assert str(spec["train.seed"]) == f"in [0, {2**32 - 1}]"
    for key in ("train.grad_clip", "train.weight_decay", "train.z_loss", "train.schedule_steps"):
        assert str(spec[key]) == ">= 0", key
    assert str(spec["train.spike_factor"]) == "0 or > 1"
    assert str(spec["model.window"]) == str(spec["model.stride"]) == ">= 1"
    assert str(spec["mesh.data"]) == "-1 or >= 1"
    assert config_lib.OBJECTIVES == ("lm", "classify", "sft", "dpo")
    assert {leaf.key: leaf.spec.options for leaf in CHOICES}["train.objective"] == config_lib.OBJECTIVES


@pytest.mark.parametrize("key,value", [
    ("train.spike_factor", 0.0), ("train.spike_factor", 1.5), ("mesh.fsdp", -1), ("train.beta1", 0.0),
    ("train.grad_clip", 0.0), ("train.seed", 2**32 - 1), ("model.dropout", 0.0), ("model.n_kv_head", 0),
    ("data.prefetch_threads", 0),
])
def test_edge_values_inside_the_range_are_accepted(key, value):
    validate(replaced(Config(), key, value))


@pytest.mark.parametrize("changes,expected", [
    ({"model.d_model": 100, "model.n_head": 6}, "model.d_model=100 must be divisible by model.n_head=6"),
    ({"model.n_head": 6, "model.n_kv_head": 4}, "model.n_head=6 must be divisible by model.n_kv_head=4"),
    ({"model.n_head": 4, "model.n_kv_head": 8}, "model.n_head=4 must be divisible by model.n_kv_head=8"),
    ({"model.position": "rope", "model.d_model": 30, "model.n_head": 2}, "even head dim"),
    ({"model.max_positions": 8}, "above the position limit 8"),
    ({"model.layer_pattern": "LGX"}, "model.layer_pattern='LGX' has 'X'; use the letters L (local"),
    ({"model.layer_pattern": "LG", "model.attention": "local"}, "it needs model.attention='dense', got 'local'"),
    ({"model.rope_scaling": "linear"}, "model.rope_scaling='linear' needs model.position='rope', got 'learned'"),
    ({"model.position": "rope", "model.rope_scaling": "yarn"}, "needs model.rope_original_positions"),
    ({"model.position": "rope", "model.rope_scaling": "llama3", "model.rope_original_positions": 64,
      "model.rope_low_freq_factor": 4.0}, "model.rope_high_freq_factor=4.0 must be above"),
    ({"model.d_model": 100, "model.n_head": 6, "model.d_head": 0}, "(or set model.d_head)"),
    ({"train.batch_size": 12, "train.grad_accum": 5}, "train.batch_size=12 must be divisible by train.grad_accum=5"),
    ({"train.lr": 1e-3, "train.min_lr": 2e-3}, "train.min_lr=0.002 must be <= train.lr=0.001"),
])
def test_cross_field_rules(changes, expected):
    cfg = Config()
    for key, value in changes.items():
        cfg = replaced(cfg, key, value)
    with pytest.raises(GptjaxError, match="invalid config") as err:
        validate(cfg)
    assert expected in str(err.value)


# --- a saved config.json as --config ----------------------------------------------------------------------------

def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_saved_config_round_trips(tmp_path):
    cfg = replaced(replaced(replaced(Config(), "train.lr", 3e-4), "data.inputs", ("a.txt", "b.txt")), "name", "x")
    loaded = to_config(load_experiment(write(tmp_path / "config.json", to_json(cfg))))
    assert loaded == cfg


def test_saved_config_keeps_defaults_for_missing_keys_and_takes_overrides(tmp_path):
    cd = load_experiment(write(tmp_path / "config.json", json.dumps({"train": {"lr": 0.002}})))
    apply_overrides(cd, ["train.steps=7"])
    cfg = to_config(cd)
    assert (cfg.train.lr, cfg.train.steps) == (0.002, 7)
    assert replaced(replaced(cfg, "train.lr", Config().train.lr), "train.steps", Config().train.steps) == Config()


def test_saved_config_is_type_locked(tmp_path):
    cd = load_experiment(write(tmp_path / "config.json", to_json(Config())))
    with pytest.raises(AttributeError):
        cd.model.n_layers = 3
    with pytest.raises(GptjaxError, match="unknown config key 'model.n_layers'"):
        apply_overrides(cd, ["model.n_layers=3"])


@pytest.mark.parametrize("text,expected", [
    ('{"train": {"lrr": 1}}', "unknown config key 'train.lrr'"),
    ('{"model": {"n_layer": "six"}}', "config key 'model.n_layer' expects an integer, got 'six'"),
    ('{"model": 3}', "config key 'model' must be a section"),
    ("[1, 2]", "is not a saved config"),
    ('{"train": {"lr": 1e-3,', "is corrupt (invalid JSON at line 1"),
])
def test_bad_saved_config_is_one_error_naming_the_file(tmp_path, text, expected):
    path = write(tmp_path / "config.json", text)
    with pytest.raises(GptjaxError) as err:
        load_experiment(path)
    message = str(err.value)
    assert str(path) in message and expected in message and "\n" not in message


def test_missing_config_file(tmp_path):
    with pytest.raises(GptjaxError, match="config file not found"):
        load_experiment(tmp_path / "nope.json")


# --- experiment files that fail ---------------------------------------------------------------------------------

# An experiment file up to line 5, `c = base_config()` inside get_config(); test sources go on from line 6.
HEAD = "from gptjax.config import base_config\n\n\ndef get_config():\n    c = base_config()\n"


@pytest.mark.parametrize("source,line,expected", [
    (HEAD + "    c.model.n_layer = = 3\n    return c\n", 6, "SyntaxError: invalid syntax"),
    (HEAD + "    c.model.n_layer = three\n    return c\n", 6, "NameError: name 'three' is not defined"),
    ("from gptjax.config import base_confg\n", 1, "ImportError: cannot import name 'base_confg'"),
    ("import gptjax_no_such_module\n", 1, "ModuleNotFoundError: No module named 'gptjax_no_such_module'"),
    (HEAD + "    c.model.n_layers = 3\n    return c\n", 6, 'AttributeError: Key "n_layers" does not exist'),
    (HEAD + "    c.train.lr = 'fast'\n    return c\n", 6, "TypeError: Could not override field 'lr'"),
    ("def steps():\n    return 1 // 0\n\n\ndef get_config():\n    return steps()\n", 2,
     "ZeroDivisionError: integer division or modulo by zero"),
])
def test_experiment_error_is_one_line_naming_file_and_line(tmp_path, source, line, expected):
    path = write(tmp_path / "exp.py", source)
    with pytest.raises(GptjaxError) as err:
        load_experiment(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: ") and expected in message, message
    assert "\n" not in message and "\\n" not in message


def test_locked_key_error_drops_the_field_dump_and_keeps_the_suggestion(tmp_path):
    path = write(tmp_path / "exp.py", HEAD + "    c.model.n_layers = 3\n    return c\n")
    with pytest.raises(GptjaxError) as err:
        load_experiment(path)
    assert str(err.value) == (f'{path}:6: AttributeError: Key "n_layers" does not exist and cannot be added since the '
                              f'config is locked. Did you mean "n_layer" instead of "n_layers"?')


@pytest.mark.parametrize("source,expected", [
    ("X = 1\n", "defines no get_config()"),
    ("def get_config():\n    return {'train': {}}\n", "get_config() must return an ml_collections.ConfigDict"),
])
def test_experiment_without_a_usable_get_config(tmp_path, source, expected):
    with pytest.raises(GptjaxError, match="get_config") as err:
        load_experiment(write(tmp_path / "exp.py", source))
    assert expected in str(err.value)


# --- what a resumed run may change ------------------------------------------------------------------------------

FREE_KEYS = {"name", "train.steps", "train.eval_every", "train.eval_batches", "train.log_every",
             "train.checkpoint_every", "train.keep_checkpoints", "train.tensorboard", "train.compilation_cache",
             "train.peak_flops", "train.cpu_devices", "data.prefetch_threads", "data.cache_dir", "data.remote_cache_gb",
             "data.remote_readahead_steps", "mesh.data",
             "mesh.fsdp", "mesh.tensor", "train.eval_tasks", "train.eval_data", "finetune.samples",
             "finetune.max_new_tokens", "train.stats_every", "train.profile_steps", "train.wandb_project",
             "train.wandb_group", "train.wandb_name"}
RECORDED_KEYS = {f"train.{k}" for k in ("lr", "min_lr", "warmup_steps", "grad_clip", "weight_decay", "beta1", "beta2",
                                        "eps", "schedule", "decay_steps", "schedule_steps", "spike_factor", "z_loss",
                                        "wsd_decay", "cycles", "muon_lr", "muon_momentum", "muon_ns_steps",
                                        "sgd_momentum", "ema_decay")
                 } | {"finetune.beta", "finetune.label_smoothing", "data.mixture_stages"}


def test_declared_resume_policies():
    policies = config_lib.resume_policies()
    assert {k for k, p in policies.items() if p is Resume.FREE} == FREE_KEYS
    assert {k for k, p in policies.items() if p is Resume.RECORDED} == RECORDED_KEYS
    assert policies["model.d_model"] is policies["train.seed"] is policies["data.dataset"] is Resume.FIXED


def changed(cfg: Config, **dotted: Any) -> dict:
    """to_dict of `cfg` with `key__sub=value` (double underscore for the dot) fields set."""
    for key, value in dotted.items():
        cfg = replaced(cfg, key.replace("__", "."), value)
    return to_dict(cfg)


def test_identical_and_free_changes_report_nothing():
    saved = to_dict(Config())
    assert resume_changes(saved, saved) == config_lib.ResumeChanges(recorded=[], forbidden=[])
    free = changed(Config(), name="again", train__steps=9000, train__eval_batches=3, mesh__data=2, mesh__fsdp=-1,
                   data__cache_dir="/elsewhere", train__tensorboard=False)
    assert resume_changes(saved, free) == config_lib.ResumeChanges(recorded=[], forbidden=[])


def test_recorded_and_forbidden_changes_are_sorted_by_key():
    saved = to_dict(Config())
    current = changed(Config(), train__lr=2e-3, train__schedule="wsd", model__d_model=192, train__seed=1,
                      train__steps=1)
    changes = resume_changes(saved, current)
    assert changes.recorded == [Change("train.lr", 1e-3, 2e-3), Change("train.schedule", "cosine", "wsd")]
    assert changes.forbidden == [Change("model.d_model", 384, 192), Change("train.seed", 0, 1)]
    assert str(changes.forbidden[0]) == "model.d_model: 384 -> 192"


def test_a_json_round_trip_is_no_change():
    cfg = replaced(Config(), "data.inputs", ("a.txt", "b.txt"))
    saved = json.loads(to_json(cfg))
    assert isinstance(saved["data"]["inputs"], list)
    assert resume_changes(saved, to_dict(cfg)) == config_lib.ResumeChanges(recorded=[], forbidden=[])
    assert resume_changes(saved, changed(cfg, data__inputs=("a.txt",))).forbidden == [
        Change("data.inputs", ["a.txt", "b.txt"], ["a.txt"])]


def test_keys_an_older_saved_config_lacks_count_as_their_default():
    saved = to_dict(Config())
    del saved["train"]["spike_factor"], saved["model"]["d_ff"]
    assert resume_changes(saved, to_dict(Config())) == config_lib.ResumeChanges(recorded=[], forbidden=[])
    changes = resume_changes(saved, changed(Config(), train__spike_factor=2.0, model__d_ff=64))
    assert changes.recorded == [Change("train.spike_factor", 0.0, 2.0)]
    assert changes.forbidden == [Change("model.d_ff", 0, 64)]


def test_a_key_todays_config_lacks_is_forbidden():
    saved = to_dict(Config())
    saved["train"]["retired_knob"] = 1
    assert resume_changes(saved, to_dict(Config())).forbidden == [Change("train.retired_knob", 1, None)]


def test_eval_task_names_are_the_tasks_gptjax_eval_loads():
    from gptjax.eval.tasks import TASKS

    assert tuple(TASKS) == config_lib.EVAL_TASKS
    assert config_lib.eval_task_specs(("hellaswag:200", "mmlu")) == [("hellaswag", 200), ("mmlu", None)]
