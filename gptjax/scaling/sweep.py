"""A scaling sweep: model shapes × token (or FLOP) budgets → one resolved, validated config per run.

Each run's `train.steps` is its token budget over the tokens of one step (batch_size × block_size), and its LR
schedule spans exactly its own steps (Chinchilla's finding: a cosine cycle longer than the run overstates the
loss), so runs of different lengths are comparable."""
from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import NamedTuple, Sequence

from gptjax import config as config_lib
from gptjax import fileio
from gptjax.config import Config
from gptjax.errors import GptjaxError
from gptjax.scaling.counts import param_counts, training_flops

PLAN_FILE = "sweep.json"
WARMUP_FRACTION = 0.1  # at most this share of a run's steps is warmup (short runs would otherwise be all warmup)


class ModelShape(NamedTuple):
    """Depth, width and heads of one sweep size (the other model fields are the base config's)."""

    n_layer: int
    d_model: int
    n_head: int


@dataclasses.dataclass(frozen=True)
class SweepRun:
    """One point of a sweep: its config and what it spends."""

    name: str
    config: Config
    params: int  # total parameters (N)
    tokens: int  # training tokens actually seen: steps × batch_size × block_size (D)
    budget: float  # the planned budget this point belongs to (tokens, or FLOPs with a FLOP sweep)

    @property
    def flops(self) -> float:
        return training_flops(self.params, self.tokens)


def shape_with_heads(n_layer: int, d_model: int, head_dim: int) -> ModelShape:
    """A shape whose head count keeps the base's head dim (d_model must be a multiple of it)."""
    if d_model % head_dim:
        raise GptjaxError(f"width {d_model} is not a multiple of the base config's head dim {head_dim}; give the heads "
                          f"explicitly (LAYERSxWIDTHxHEADS) or pick widths that are multiples of {head_dim}")
    return ModelShape(n_layer, d_model, d_model // head_dim)


def parse_shapes(text: str, head_dim: int) -> list[ModelShape]:
    """Shapes from "LxD[xH],..." (e.g. "2x64,4x128x4"); without H the base config's head dim is kept."""
    shapes = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        try:
            numbers = [int(x) for x in item.lower().split("x")]
        except ValueError:
            numbers = []
        if len(numbers) not in (2, 3) or min(numbers) < 1:
            raise GptjaxError(f"--sizes entry '{item}' is not LAYERSxWIDTH or LAYERSxWIDTHxHEADS "
                              f"(e.g. 4x128 or 4x128x4)")
        shapes.append(ModelShape(*numbers) if len(numbers) == 3 else shape_with_heads(*numbers, head_dim))
    if not shapes:
        raise GptjaxError("--sizes names no model size; give e.g. --sizes 2x64,4x128,6x192")
    return shapes


def shapes_from_widths(widths: Sequence[int], aspect_ratio: float, head_dim: int) -> list[ModelShape]:
    """Shapes at a fixed aspect ratio d_model / n_layer (Kaplan et al.'s shape parameter), depth rounded, at least 1."""
    if aspect_ratio <= 0:
        raise GptjaxError(f"--aspect-ratio must be > 0 (d_model / n_layer), got {aspect_ratio}")
    return [shape_with_heads(max(1, round(width / aspect_ratio)), width, head_dim) for width in widths]


def parse_numbers(text: str, flag: str) -> list[float]:
    """Positive numbers from "1e6,2e6,4e6"."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise GptjaxError(f"{flag} expects comma-separated numbers (e.g. 1e6,4e6), got '{text}'") from None
    if not values or min(values) <= 0:
        raise GptjaxError(f"{flag} needs positive numbers (e.g. 1e6,4e6), got '{text}'")
    return values


def tokens_per_step(cfg: Config) -> int:
    return cfg.train.batch_size * cfg.model.block_size


def steps_for_tokens(tokens: float, cfg: Config) -> int:
    """Optimizer steps that spend `tokens` (rounded to the nearest step), at least one."""
    per_step = tokens_per_step(cfg)
    steps = round(tokens / per_step)
    if steps < 1:
        raise GptjaxError(f"a budget of {tokens:.3g} tokens is less than one step ({per_step} tokens = "
                          f"train.batch_size × model.block_size); raise the budget or lower the batch")
    return steps


def shaped_config(base: Config, shape: ModelShape) -> Config:
    """The base config at another depth, width and head count; GQA keeps its group size (query heads per KV head)."""
    group = base.model.n_head // base.model.kv_heads
    if shape.n_head % group:
        raise GptjaxError(f"{shape.n_head} heads do not divide into the base config's GQA groups of {group}")
    kv = 0 if base.model.n_kv_head == 0 else shape.n_head // group
    model = dataclasses.replace(base.model, n_layer=shape.n_layer, d_model=shape.d_model, n_head=shape.n_head,
                                n_kv_head=kv)
    return dataclasses.replace(base, model=model)


def run_config(base: Config, shape: ModelShape, steps: int, name: str) -> Config:
    """The validated config of one run: the shape, `steps`, an LR schedule of exactly `steps`, a capped warmup."""
    shaped = shaped_config(base, shape)
    train = dataclasses.replace(shaped.train, steps=steps, schedule_steps=0, decay_steps=0,
                                warmup_steps=min(shaped.train.warmup_steps, int(steps * WARMUP_FRACTION)))
    cfg = dataclasses.replace(shaped, name=name, train=train)
    try:
        config_lib.validate(cfg)
    except GptjaxError as e:
        raise GptjaxError(f"sweep run {name}: {e}") from None
    return cfg


def _short(x: float) -> str:
    return f"{x:.3g}".replace("e+0", "e").replace("e+", "e")


def plan_sweep(base: Config, shapes: Sequence[ModelShape], tokens: Sequence[float] = (),
               flops: Sequence[float] = ()) -> list[SweepRun]:
    """Every shape at every token budget, or (with `flops`) at the tokens D = C / (6·N) that spend each FLOP
    budget C; base.model.vocab_size must be known (the embedding is part of N)."""
    if bool(tokens) == bool(flops):
        raise GptjaxError("give exactly one of --tokens (token budgets) or --flops (FLOP budgets, C = 6·N·D)")
    runs = []
    for shape in shapes:
        n_params = param_counts(shaped_config(base, shape).model).total
        for budget in (tokens or flops):
            run_tokens = budget if tokens else budget / (6.0 * n_params)
            name = f"L{shape.n_layer}_d{shape.d_model}_{'D' if tokens else 'C'}{_short(budget)}"
            cfg = run_config(base, shape, steps_for_tokens(run_tokens, base), name)
            runs.append(SweepRun(name, cfg, n_params, cfg.train.steps * tokens_per_step(cfg), budget))
    return runs


def train_command(config_path: Path, workdir: Path) -> str:
    return f"gptjax train --config {shlex.quote(str(config_path))} --workdir {shlex.quote(str(workdir))}"


def write_sweep(runs: Sequence[SweepRun], out_dir: str | Path) -> list[str]:
    """Writes OUT/NAME.json per run and OUT/sweep.json (the plan); returns the `gptjax train` commands, each
    training into OUT/NAME/ (which `gptjax scaling fit --runs OUT` reads)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise GptjaxError(f"--out {out_dir} exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    commands, plan = [], []
    for run in runs:
        config_path = out_dir / f"{run.name}.json"
        fileio.write_json_atomic(config_path, config_lib.to_dict(run.config))
        command = train_command(config_path, out_dir / run.name)
        commands.append(command)
        plan.append({"name": run.name, "params": run.params, "tokens": run.tokens, "flops": run.flops,
                     "budget": run.budget, "steps": run.config.train.steps, "n_layer": run.config.model.n_layer,
                     "d_model": run.config.model.d_model, "n_head": run.config.model.n_head, "command": command})
    fileio.write_json_atomic(out_dir / PLAN_FILE, {"runs": plan})
    return commands
