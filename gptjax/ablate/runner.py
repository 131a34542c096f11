"""Ablations: named variants of one base config, each trained for several seeds at a matched budget, resumably.

An ablation file (`experiments/ablations/X.py`) defines `get_ablation()` returning an `Ablation`: a base config
(`gptjax.config.base_config()` with fields set), variants as dotted overrides of it, the base's steps and the
budget kind that sets every variant's steps (`flops`: steps x batch x block x FLOPs/token equal to the base's;
`tokens`: steps x batch x block equal; `steps`: equal steps), and optionally a `Sweep` of one hyperparameter per
variant (each variant is then reported at its best value, chosen on held-out data: `gptjax.ablate.heldout`).
`plan_ablation` resolves and checks every run before any starts; `execute` trains the missing ones one after another,
each an ordinary `gptjax train` run in `ROOT/VARIANT/seedK`, or `ROOT/VARIANT/KEY=VALUE/seedK` for a swept variant
(seed K is `train.seed`: the init and the data order, shared across variants and swept values).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import runpy
import shlex
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import ml_collections

from gptjax import config as config_lib
from gptjax import fileio
from gptjax.config import Config, ModelConfig
from gptjax.errors import GptjaxError

BUDGETS = ("flops", "tokens", "steps")
BASE_CONFIG_FILE = "base_config.json"  # in the ablation's root: what the printed commands' --config points at
PLAN_FILE = "ablation.json"
RUN_CONFIG_FILE = "config.json"  # in each run's workdir, as `gptjax train` writes it
WALL_KEY = "wall_s"  # logged beside each val loss: seconds of training so far, summed over resumes
BUDGET_DECIDED = ("train.steps", "train.seed", "train.eval_tasks")
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One hyperparameter tried at several values: each value is a run (per seed), and the variant is compared at
    the value whose runs score best on the held-out selection data."""

    key: str  # a dotted config field, e.g. "train.lr"
    values: tuple[float, ...]
    # other fields set in proportion to the swept value, e.g. {"train.min_lr": 0.1}: min_lr = lr / 10
    scaled: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def overrides(self, value: float) -> dict[str, Any]:
        """The config fields one point of the sweep sets."""
        return {self.key: value, **{key: _tidy(ratio * value) for key, ratio in self.scaled.items()}}

    def directory(self, value: float) -> str:
        """The directory one point's seeds train in, below the variant's: "train.lr=0.003"."""
        return f"{self.key}={format_value(value)}"


def _tidy(value: float) -> float:
    """`value` rounded to 12 significant digits, so 0.1 * 3e-3 prints as 0.0003 in the train commands."""
    return float(f"{value:.12g}")


@dataclasses.dataclass(frozen=True)
class Ablation:
    """What an ablation file's `get_ablation()` returns."""

    base: ml_collections.ConfigDict  # gptjax.config.base_config() with fields set
    variants: Mapping[str, Mapping[str, Any]]  # name -> {"model.norm": "rmsnorm", ...}; {} is the base itself
    steps: int = 0  # the base config's training steps; 0 = base.train.steps
    budget: str = "flops"  # the default of `--budget`
    reference: str = ""  # the variant the others are compared with; "" = the first
    eval_tasks: tuple[str, ...] = ()  # downstream tasks scored at each eval ("TASK[:LIMIT]", as train.eval_tasks)
    sweep: Sweep | None = None  # swept in every variant not in `sweeps`
    sweeps: Mapping[str, Sweep | None] = dataclasses.field(default_factory=dict)  # a variant's own (None: unswept)
    # tokens of each half of the val split scored per run when anything is swept (0 = the whole half)
    heldout_tokens: int = 0


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One variant x seed: its resolved config, where it trains, and its overrides of the base config."""

    variant: str
    seed: int
    workdir: Path
    cfg: Config
    overrides: tuple[str, ...]  # "dotted.key=value", as `gptjax train --config.dotted.key=value`
    vocab_size: int  # the data's tokenizer vocabulary, for counting params and FLOPs
    swept_value: float | None = None  # the value of the variant's sweep key (None: the variant is not swept)

    @property
    def counted_model(self) -> ModelConfig:
        """The model config with its vocabulary resolved, as the trainer builds it."""
        return counted_model(self.cfg, self.vocab_size)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Every run of an ablation, checked, in the order they train (seed-major, so a partial run covers variants)."""

    name: str
    root: Path
    budget: str
    budget_amount: float  # FLOPs, tokens or steps per run
    reference: str
    variants: tuple[str, ...]
    variant_overrides: Mapping[str, Mapping[str, Any]]  # as the ablation file gives them
    runs: tuple[PlannedRun, ...]
    base: Config
    sweeps: Mapping[str, Sweep] = dataclasses.field(default_factory=dict)  # the swept variants' sweeps
    heldout_tokens: int = 0

    @property
    def tuned(self) -> bool:
        """Whether a variant is swept, so variants are compared at their chosen values on held-out data."""
        return bool(self.sweeps)

    def runs_of(self, variant: str) -> list[PlannedRun]:
        return [run for run in self.runs if run.variant == variant]

    def runs_at(self, variant: str, value: float | None) -> list[PlannedRun]:
        """The runs (one per seed) of a variant at one swept value (None: an unswept variant's runs)."""
        return [run for run in self.runs if run.variant == variant and run.swept_value == value]

    def values_of(self, variant: str) -> tuple[float | None, ...]:
        """The swept values of a variant; (None,) when it is not swept."""
        return tuple(self.sweeps[variant].values) if variant in self.sweeps else (None,)


def load_ablation(path: str | Path) -> Ablation:
    """The `Ablation` an ablation file's `get_ablation()` returns; any failure is one GptjaxError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise GptjaxError(f"ablation file not found: {path} (pass --config experiments/ablations/NAME.py)")
    try:
        get_ablation = runpy.run_path(str(path)).get("get_ablation")
        if not callable(get_ablation):
            raise GptjaxError(f"{path} defines no get_ablation(); an ablation file's get_ablation() returns "
                              f"gptjax.ablate.Ablation(base=..., variants={{...}})")
        ablation = get_ablation()
    except GptjaxError:
        raise
    except Exception as error:
        raise GptjaxError(config_lib.failure_in_file(path, error)) from error
    if not isinstance(ablation, Ablation):
        raise GptjaxError(f"{path}: get_ablation() must return a gptjax.ablate.Ablation, got {type(ablation).__name__}")
    return ablation


def format_value(value: Any) -> str:
    """`value` as the text of a `--config.KEY=VALUE` override (which `config.apply_overrides` parses back)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def override_items(overrides: Mapping[str, Any]) -> tuple[str, ...]:
    """{"model.norm": "rmsnorm"} -> ("model.norm=rmsnorm",)."""
    return tuple(f"{key}={format_value(value)}" for key, value in overrides.items())


def tracker_items(cfg: Config, group: str, run_name: str) -> tuple[str, ...]:
    """When the config logs to W&B (train.wandb_project): one W&B run per ablation run, named by its place under the
    ablation's root (VARIANT/seedK, VARIANT/KEY=VALUE/seedK) and grouped by the ablation's name."""
    if not cfg.train.wandb_project:
        return ()
    return f"train.wandb_name={run_name}", f"train.wandb_group={group}"


def resolve(base: ml_collections.ConfigDict, items: Sequence[str]) -> Config:
    """The validated Config of `base` with `items` ("key=value") applied; `base` is left unchanged."""
    cd = copy.deepcopy(base)
    config_lib.apply_overrides(cd, list(items))
    return config_lib.to_config(cd)


def cost_per_step(budget: str, model: ModelConfig, batch_size: int) -> float:
    """What one training step of this model and batch spends of `budget` (FLOPs, tokens or 1 step)."""
    tokens_per_step = batch_size * model.block_size
    return {"steps": 1.0, "tokens": float(tokens_per_step), "flops": tokens_per_step * flops_per_token(model)}[budget]


def flops_per_token(model: ModelConfig) -> float:
    """Training FLOPs per token over a full block (the analytic count the trainer's MFU uses)."""
    from gptjax.model.transformer import flops_per_token as count

    return count(model, model.block_size)


def counted_model(cfg: Config, data_vocab: int) -> ModelConfig:
    """The model config with model.vocab_size taken from (or checked against) the data's vocabulary."""
    from gptjax.data.tokenizer import with_vocab

    return with_vocab(cfg, data_vocab).model


def data_vocab_size(cfg: Config) -> int:
    """The vocabulary of the tokenizer the config's data is prepared with (preparing it on first use)."""
    from gptjax.prepare.resolve import open_data

    return open_data(cfg)[2].vocab_size


def _check_variant(name: str, overrides: Mapping[str, Any]) -> None:
    if not _VARIANT_NAME.match(name):
        raise GptjaxError(f"variant name {name!r} must be letters, digits, '_', '.' or '-' (it names a directory)")
    if not isinstance(overrides, Mapping):
        raise GptjaxError(f"variant {name!r} must be a dict of dotted overrides like {{'model.norm': 'rmsnorm'}}, "
                          f"got {overrides!r}")
    decided = [key for key in overrides if key in BUDGET_DECIDED]
    if decided:
        raise GptjaxError(f"variant {name!r} sets {decided[0]}, which the ablation decides (train.steps from the "
                          f"budget, train.seed from --seeds, train.eval_tasks from Ablation.eval_tasks)")


def _checked_sweeps(ablation: Ablation) -> dict[str, Sweep]:
    """Each swept variant's sweep, checked; variants without one are left out."""
    unknown = [name for name in ablation.sweeps if name not in ablation.variants]
    if unknown:
        raise GptjaxError(f"Ablation.sweeps names {unknown[0]!r}, which is not one of the variants "
                          f"({', '.join(ablation.variants)})")
    if ablation.heldout_tokens < 0:
        raise GptjaxError(f"Ablation.heldout_tokens must be >= 0 (0 = each whole half of the val split), got "
                          f"{ablation.heldout_tokens}")
    sweeps = {}
    for variant, overrides in ablation.variants.items():
        sweep = ablation.sweeps[variant] if variant in ablation.sweeps else ablation.sweep
        if sweep is not None:
            _check_sweep(variant, sweep, overrides)
            sweeps[variant] = sweep
    return sweeps


def _check_sweep(variant: str, sweep: Sweep, overrides: Mapping[str, Any]) -> None:
    if not isinstance(sweep, Sweep):
        raise GptjaxError(f"variant {variant!r}: a sweep must be gptjax.ablate.Sweep(key='train.lr', "
                          f"values=(...)), got {sweep!r}")
    label = f"variant {variant!r}'s sweep of {sweep.key}"
    if not isinstance(sweep.values, (tuple, list)) or not sweep.values:
        raise GptjaxError(f"{label} has no values; give Sweep(values=(...)) at least one number")
    not_numbers = [v for v in sweep.values if isinstance(v, bool) or not isinstance(v, (int, float))]
    if not_numbers:
        raise GptjaxError(f"{label}: its values must be numbers, got {not_numbers[0]!r}")
    if len(set(sweep.values)) < len(sweep.values):
        raise GptjaxError(f"{label} lists a value twice: {format_value(sweep.values)}")
    if not isinstance(sweep.scaled, Mapping) or sweep.key in sweep.scaled or any(
            isinstance(r, bool) or not isinstance(r, (int, float)) for r in sweep.scaled.values()):
        raise GptjaxError(f"{label}: scaled must map other dotted keys to numbers (key = number x swept value), "
                          f"got {sweep.scaled!r}")
    keys = (sweep.key, *sweep.scaled)
    decided = [key for key in keys if key in BUDGET_DECIDED]
    if decided:
        raise GptjaxError(f"{label} sets {decided[0]}, which the ablation decides")
    both = [key for key in keys if key in overrides]
    if both:
        raise GptjaxError(f"variant {variant!r} sets {both[0]}, which its sweep decides; drop it from the variant")


def _resolve_labelled(base: ml_collections.ConfigDict, label: str, items: Sequence[str]) -> Config:
    try:
        return resolve(base, items)
    except GptjaxError as error:
        raise GptjaxError(f"{label}: {error}") from None


def _identical_variants(configs: Mapping[str, Config]) -> tuple[str, str] | None:
    seen: dict[str, str] = {}
    for name, cfg in configs.items():
        key = config_lib.to_json(cfg)
        if key in seen:
            return seen[key], name
        seen[key] = name
    return None


def _matched_steps(variant: str, budget: str, amount: float, model: ModelConfig, batch_size: int) -> int:
    """The whole number of steps nearest to spending `amount` of `budget`; at least one."""
    exact = amount / cost_per_step(budget, model, batch_size)
    if round(exact) < 1:
        raise GptjaxError(f"variant {variant!r} cannot meet the {budget} budget of {amount:.4g}: it allows "
                          f"{exact:.3g} steps (fewer than one); raise the ablation's steps or shrink the variant")
    return round(exact)


def plan_ablation(ablation: Ablation, root: str | Path, seeds: int, budget: str = "", name: str = "") -> Plan:
    """Every run of `ablation` under `root`, each resolved and validated; raises at the first bad variant, budget
    or duplicate before anything is trained."""
    root, budget = Path(root), budget or ablation.budget
    if budget not in BUDGETS:
        raise GptjaxError(f"--budget {budget!r} is not one of {', '.join(BUDGETS)}")
    if seeds < 1:
        raise GptjaxError(f"--seeds must be at least 1, got {seeds}")
    if not ablation.variants:
        raise GptjaxError("the ablation has no variants")
    reference = ablation.reference or next(iter(ablation.variants))
    if reference not in ablation.variants:
        raise GptjaxError(f"reference variant {reference!r} is not one of {', '.join(ablation.variants)}")
    base_items = (f"train.eval_tasks={format_value(ablation.eval_tasks)}",) if ablation.eval_tasks else ()
    base = _resolve_labelled(ablation.base, "the base config", base_items)
    base_steps = ablation.steps or base.train.steps
    if base_steps < 1:
        raise GptjaxError(f"the ablation's steps must be at least 1, got {base_steps}")

    items_of, configs = {}, {}
    for variant, overrides in ablation.variants.items():
        _check_variant(variant, overrides)
        items_of[variant] = base_items + override_items(overrides)
        configs[variant] = _resolve_labelled(ablation.base, f"variant {variant!r}", items_of[variant])
    if (pair := _identical_variants(configs)) is not None:
        raise GptjaxError(f"variants {pair[0]!r} and {pair[1]!r} are the same config; drop one or change its overrides")
    sweeps = _checked_sweeps(ablation)

    points: dict[tuple[str, float | None], tuple[tuple[str, ...], Config]] = {}  # (variant, swept value) -> run
    for variant in configs:
        sweep = sweeps.get(variant)
        for value in sweep.values if sweep else (None,):
            if sweep is None:
                points[variant, value] = items_of[variant], configs[variant]
                continue
            items = items_of[variant] + override_items(sweep.overrides(value))
            points[variant, value] = items, _resolve_labelled(
                ablation.base, f"variant {variant!r} at {sweep.key}={format_value(value)}", items)

    vocab: dict = {}
    for cfg in (base, *(cfg for _, cfg in points.values())):
        if cfg.data not in vocab:
            vocab[cfg.data] = data_vocab_size(cfg)
    amount = base_steps * cost_per_step(budget, counted_model(base, vocab[base.data]), base.train.batch_size)
    steps_of = {point: _matched_steps(point[0], budget, amount, counted_model(cfg, vocab[cfg.data]),
                                      cfg.train.batch_size) for point, (_, cfg) in points.items()}
    runs = []
    for seed in range(seeds):
        for (variant, value), (point_items, cfg) in points.items():
            point_dir = root / variant if value is None else root / variant / sweeps[variant].directory(value)
            items = (*point_items, f"train.steps={steps_of[variant, value]}", f"train.seed={seed}",
                     *tracker_items(cfg, name or root.name, (point_dir / f"seed{seed}").relative_to(root).as_posix()))
            runs.append(PlannedRun(variant=variant, seed=seed, workdir=point_dir / f"seed{seed}",
                                   cfg=resolve(ablation.base, items), overrides=items,
                                   vocab_size=vocab[cfg.data], swept_value=value))
    return Plan(name=name or root.name, root=root, budget=budget, budget_amount=amount, reference=reference,
                variants=tuple(configs), variant_overrides=dict(ablation.variants), runs=tuple(runs), base=base,
                sweeps=sweeps, heldout_tokens=ablation.heldout_tokens)


def write_plan_files(plan: Plan, base: ml_collections.ConfigDict) -> None:
    """The base config (what the printed commands start from), each run's resolved config, and the plan."""
    plan.root.mkdir(parents=True, exist_ok=True)
    fileio.write_json_atomic(plan.root / BASE_CONFIG_FILE, config_lib.to_dict(config_lib.to_config(base)))
    for run in plan.runs:
        run.workdir.mkdir(parents=True, exist_ok=True)
        if latest_checkpoint_step(run.workdir) is None:  # else the trainer's own copy (vocab resolved) stays
            fileio.write_json_atomic(run.workdir / RUN_CONFIG_FILE, config_lib.to_dict(run.cfg))
    fileio.write_json_atomic(plan.root / PLAN_FILE, {
        "name": plan.name, "budget": plan.budget, "budget_amount": plan.budget_amount,
        "reference": plan.reference, "variants": list(plan.variants),
        "sweeps": {variant: sweep_json(sweep) for variant, sweep in plan.sweeps.items()},
        "runs": [{"variant": r.variant, "seed": r.seed, "workdir": str(r.workdir), "overrides": list(r.overrides),
                  **({} if r.swept_value is None else {"swept_value": r.swept_value})} for r in plan.runs]})


def sweep_json(sweep: Sweep) -> dict:
    return {"key": sweep.key, "values": list(sweep.values), "scaled": dict(sweep.scaled)}


def train_command(run: PlannedRun, root: Path) -> str:
    """The `gptjax train` line that trains `run` by itself (on a cluster node, say)."""
    words = ["gptjax", "train", "--config", str(root / BASE_CONFIG_FILE), "--workdir", str(run.workdir),
             *(f"--config.{item}" for item in run.overrides)]
    return shlex.join(words)


def latest_checkpoint_step(workdir: Path) -> int | None:
    """The newest checkpoint step in a run's workdir (None when it has none)."""
    from gptjax.checkpoint import CHECKPOINT_DIR, Checkpoints

    if not (workdir / CHECKPOINT_DIR).is_dir():
        return None
    checkpoints = Checkpoints(workdir)
    try:
        return checkpoints.latest_step()
    finally:
        checkpoints.manager.close()


def is_finished(run: PlannedRun) -> bool:
    """Whether `run` has its checkpoint at its last step (so training it again would do nothing)."""
    return latest_checkpoint_step(run.workdir) == run.cfg.train.steps


def _wall_clock_hook():
    """A training hook that logs `wall_s` beside each val loss: seconds since the run's first step was dispatched
    (so compiling it and opening the run are left out), plus the time a resumed run had already spent (its last
    `wall_s` at or before the step it resumed from)."""
    from gptjax.train.hooks import EvalHook

    class WallClock(EvalHook):
        def __init__(self):
            self.started: float | None = None
            self.before = 0.0

        def due(self, run, done: int) -> bool:
            return done == run.start_step + 1 or super().due(run, done)

        def __call__(self, run, done: int, state) -> None:
            if self.started is None:
                from gptjax.train.metrics import read_metrics

                self.started = time.perf_counter()
                earlier = [row[WALL_KEY] for step, row in read_metrics(run.workdir).items()
                           if step <= run.start_step and WALL_KEY in row]
                self.before = earlier[-1] if earlier else 0.0
            if super().due(run, done):
                run.writer.write(done, {WALL_KEY: self.before + time.perf_counter() - self.started})

    return WallClock()


def cpu_device_split(plan: Plan) -> None:
    """Splits the host CPU into devices that divide every run's microbatch (before JAX starts), as `gptjax train`
    does per run."""
    from gptjax.parallel.mesh import configure_cpu_devices

    microbatches = [run.cfg.train.batch_size // run.cfg.train.grad_accum for run in plan.runs]
    configure_cpu_devices(plan.base.train.cpu_devices, math.gcd(*microbatches))


def check_eval_tasks(plan: Plan) -> None:
    """Loads the downstream tasks once, so missing task data fails before the first run, not after it."""
    if plan.base.train.eval_tasks:
        from gptjax.train.hooks import TaskEvalHook

        TaskEvalHook(plan.base)


def check_existing_runs(plan: Plan) -> None:
    """Refuses, before anything trains, a run directory holding a checkpoint of another config than planned (the
    ablation file changed since): resuming it would mix two experiments."""
    from gptjax.data.tokenizer import with_vocab

    for run in plan.runs:
        saved = run.workdir / RUN_CONFIG_FILE
        if latest_checkpoint_step(run.workdir) is None or not saved.is_file():
            continue
        planned = config_lib.to_dict(with_vocab(run.cfg, run.vocab_size))
        forbidden = config_lib.resume_changes(fileio.read_json(saved, "run config", "move the run aside"),
                                              planned).forbidden
        if forbidden:
            raise GptjaxError(f"{run.workdir} holds a checkpoint of another config than the ablation plans "
                              f"({forbidden[0]}); move that directory aside or use a new --workdir")


def execute(plan: Plan, show_progress: bool = True) -> list[PlannedRun]:
    """Trains every unfinished run of `plan` in order (a run cut short resumes from its checkpoint); returns the
    runs it trained. A finished run is never touched."""
    from tqdm.auto import tqdm

    from gptjax.train.loop import train

    check_existing_runs(plan)
    check_eval_tasks(plan)
    pending = [run for run in plan.runs if not is_finished(run)]
    bar = tqdm(total=len(plan.runs), initial=len(plan.runs) - len(pending), desc=f"ablate {plan.name}",
               unit="run", dynamic_ncols=True, disable=not show_progress)
    try:
        for run in pending:
            bar.set_postfix_str(run.workdir.relative_to(plan.root).as_posix(), refresh=True)
            train(run.cfg, run.workdir, show_progress=False, hooks=(_wall_clock_hook(),))
            bar.update(1)
    finally:
        bar.close()
    return pending


def plan_summary(plan: Plan) -> str:
    """What the ablation trains: the budget, then one line per variant with its steps and overrides."""
    seeds = len({run.seed for run in plan.runs})
    lines = [f"ablation {plan.name}: {len(plan.variants)} variants x {seeds} seeds"
             + (f" ({len(plan.runs)} runs with the sweeps)" if plan.tuned else "")
             + f", {plan.budget} budget {plan.budget_amount:.4g} per run (reference: {plan.reference})"]
    for variant in plan.variants:
        run = plan.runs_of(variant)[0]
        sweep = plan.sweeps.get(variant)
        swept = "" if sweep is None else (f", {sweep.key} swept over {format_value(sweep.values)}"
                                          + "".join(f", {key} = {ratio:g} x it" for key, ratio in sweep.scaled.items()))
        lines.append(f"  {variant}: {run.cfg.train.steps} steps, "
                     f"{json.dumps(dict(plan.variant_overrides[variant]), default=str)}{swept}")
    return "\n".join(lines)
