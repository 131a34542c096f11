"""`gptjax compile-check`: the real train step compiled ahead of time for a Cloud TPU topology on this CPU-only
machine (libtpu's compile-only devices), its per-device memory against HBM, and clear errors for bad input."""
from __future__ import annotations

import importlib.util
import re

import pytest
from conftest import run_cli

from gptjax.errors import GptjaxError
from gptjax.train import compile_check as cc

CONFIG = "experiments/shakespeare_char_cpu.py"
TINY = ["--config.model.vocab_size=65", "--config.model.block_size=64", "--config.model.n_layer=2",
        "--config.model.n_head=4", "--config.model.d_model=64", "--config.train.batch_size=8"]
needs_libtpu = pytest.mark.skipif(not importlib.util.find_spec("libtpu"),
                                  reason="libtpu (pip install -e '.[tpu]') compiles for TPU topologies")


def compile_check(*args: str):
    return run_cli(["compile-check", "--config", CONFIG, *args], timeout=400)


def gib(line: str, label: str) -> float:
    """The size after `label` in a report line, in GiB."""
    value, unit = re.search(rf"{label} ([\d.]+) (GiB|MiB)", line).groups()
    return float(value) / (1024 if unit == "MiB" else 1)


@needs_libtpu
def test_small_config_compiles_for_v5e_2x2_and_fits():
    proc = compile_check("--topology", "v5e:2x2", "--mesh", "data=2,fsdp=-1,tensor=1", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].endswith("on v5e-4 (v5e:2x2): 4 x TPU v5 lite, 16 GiB HBM each; mesh data=2 fsdp=2 tensor=1, "
                             "remat none, grad_accum 1"), lines[0]
    memory = next(line for line in lines if line.startswith("per device: arguments"))
    total = next(line for line in lines if line.startswith("per device: total"))
    parts = {label: gib(memory, label) for label in ("arguments", "temporaries", "outputs")}
    assert parts["arguments"] > 0 and parts["outputs"] > 0
    assert 0 < gib(total, "total") < 16 and "of 16.00 GiB HBM" in total
    assert any(line.startswith("compile time: ") for line in lines)
    assert any(line.startswith("FLOPs per step: ") and "at 40% MFU" in line and "at 60% MFU" in line for line in lines)
    assert lines[-1].startswith("fits: yes (") and "of 16 GiB HBM per device" in lines[-1]


@needs_libtpu
def test_two_slices_put_data_parallelism_across_them():
    proc = compile_check("--topology", "2xv5e-4", "--mesh", "data=2,fsdp=4,tensor=1", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert "on 2xv5e-4 (2 x v5e:2x2): 8 x TPU v5 lite" in lines[0] and lines[-1].startswith("fits: yes (")


@needs_libtpu
def test_a_config_too_big_for_the_chips_says_no_with_exit_1():
    proc = compile_check("--topology", "v5e:2x2", *TINY, "--config.model.d_model=4096", "--config.model.n_layer=24",
                         "--config.model.n_head=32", "--config.model.scan_layers=true", "--config.mesh.data=4")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("fits: no (")


@pytest.mark.parametrize("args, message", [
    (["--topology", "v9-8"], "unknown TPU topology 'v9-8'; known: Cloud names v4-{8,16,32"),
    (["--topology", "v5e:2x2", "--mesh", "data=1,pipe=4"], "expected data=N,fsdp=N,tensor=N"),
    pytest.param(["--topology", "v5e:2x2", "--mesh", "data=3,fsdp=1,tensor=1"],
                 "data*fsdp*tensor = 3 but there are 4 devices", marks=needs_libtpu),
    pytest.param(["--topology", "v5e:2x2", "--mesh", "data=1,fsdp=1,tensor=4", "--config.model.n_head=6",
                  "--config.model.d_model=66"], "mesh tensor=4 does not divide model.n_head=6", marks=needs_libtpu),
    pytest.param(["--topology", "2xv5e-4", "--mesh", "data=1,fsdp=8,tensor=1"], "must divide by the 2 TPU slices",
                 marks=needs_libtpu),
])
def test_bad_topology_or_mesh_is_one_clear_line(args, message):
    proc = compile_check(*TINY, *args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gptjax: error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-3000:]


@pytest.mark.parametrize("name, grid, slices, chips", [
    ("v4-32", (2, 2, 4), 1, 16), ("v5p-128", (4, 4, 4), 1, 64), ("v5e-16", (4, 4), 1, 16),
    ("v5litepod-16", (4, 4), 1, 16), ("v6e-16", (4, 4), 1, 16), ("2xv5e-16", (4, 4), 2, 32),
    ("v5e:4x4", (4, 4), 1, 16), ("v5p-64", (2, 4, 4), 1, 32), ("v5e-8", (2, 4), 1, 8), ("v5e-1", (1, 1), 1, 1),
])
def test_cloud_names_and_jax_strings_give_the_chip_grid(name, grid, slices, chips):
    topology = cc.parse_topology(name)
    assert (topology.grid, topology.slices, topology.chips) == (grid, slices, chips)


@pytest.mark.parametrize("name", ["v5e-12", "v4-6", "v5e:4", "v4:2x2", "tpu-8", "v5e"])
def test_names_no_slice_has_are_errors(name):
    with pytest.raises(GptjaxError, match="topology|grid has"):
        cc.parse_topology(name)


def test_search_candidates_shard_evenly_and_put_least_recompute_first():
    from gptjax import config as config_lib

    cfg = cc.with_known_vocab(config_lib.to_config(config_lib.load_experiment("experiments/gpt2_124m.py")))
    options = cc.candidates(cfg, 16, hbm_bytes=16 * cc.GIB)
    assert options and all(cc.sharding_problem(o, vars(o.mesh)) is None for o in options)
    assert {(o.mesh.data, o.mesh.fsdp) for o in options if o.mesh.tensor == 1} == {(1, 16), (16, 1)}
    assert not cc.candidates(cfg, 16, hbm_bytes=1e6), "a state that cannot fit is never compiled"
    assert all(o.mesh.data * o.mesh.fsdp * o.mesh.tensor == 16 for o in options)
    costs = [cc.RECOMPUTE[o.model.remat] for o in options]
    assert costs == sorted(costs) and options[0].train.grad_accum == 1


@needs_libtpu
def test_search_prints_the_settings_that_fit_fastest_looking_first():
    proc = compile_check("--topology", "v5e:2x2", "--search", "--max-compiles", "2", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    fits = [line for line in lines if line.startswith("fit #")]
    assert [f.split(":")[0] for f in fits] == ["fit #1", "fit #2"]
    assert "remat none, grad_accum 1" in fits[0]
    assert lines[-1] == "fits: yes (2 setting(s) fit)"
