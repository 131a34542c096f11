"""(N, D, loss) observations: from a sweep directory's finished runs, or from a CSV/JSON file of points."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import NamedTuple, Sequence

from gptjax import config as config_lib
from gptjax import fileio
from gptjax.errors import GptjaxError
from gptjax.scaling.counts import param_counts, training_flops

RUN_CONFIG = "config.json"
RUN_METRICS = "metrics.jsonl"
LOSS_KEY = "val_loss"
# accepted column / key names of a points file, first the canonical one
COLUMNS = {"params": ("params", "N", "n"), "tokens": ("tokens", "D", "d"), "loss": ("loss", "L", "val_loss")}


class LossPoint(NamedTuple):
    """One training run: its parameters N, its training tokens D and its final loss."""

    params: float
    tokens: float
    loss: float
    name: str = ""

    @property
    def flops(self) -> float:
        return training_flops(self.params, self.tokens)


def final_loss(metrics_path: Path, steps: int) -> float | None:
    """The val loss logged at step `steps` (the last such line, after a resume), None if there is none yet.

    Lines that are not JSON (a write cut short by a kill) are skipped."""
    if not metrics_path.is_file():
        return None
    loss = None
    for line in metrics_path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("step") == steps and LOSS_KEY in entry:
            loss = float(entry[LOSS_KEY])
    return loss


def run_point(run_dir: Path, param_kind: str = "total") -> LossPoint | None:
    """The point of a run directory (config.json + metrics.jsonl), None while it has not reached train.steps."""
    cfg = config_lib.to_config(config_lib.load_experiment(run_dir / RUN_CONFIG))
    loss = final_loss(run_dir / RUN_METRICS, cfg.train.steps)
    if loss is None:
        return None
    tokens = cfg.train.steps * cfg.train.batch_size * cfg.model.block_size
    return LossPoint(float(param_counts(cfg.model).of_kind(param_kind)), float(tokens), loss, run_dir.name)


def read_runs(runs_dir: str | Path, param_kind: str = "total") -> list[LossPoint]:
    """The points of every finished run in `runs_dir` (the directory itself, or its subdirectories, being runs)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise GptjaxError(f"--runs {runs_dir} is not a directory; pass a sweep directory (gptjax scaling sweep --out) "
                          f"or a CSV/JSON file of params,tokens,loss points")
    run_dirs = [runs_dir] if (runs_dir / RUN_CONFIG).is_file() else sorted(
        p.parent for p in runs_dir.glob(f"*/{RUN_CONFIG}"))
    points = [point for point in (run_point(d, param_kind) for d in run_dirs) if point is not None]
    if not points:
        raise GptjaxError(f"{runs_dir} has no finished run ({len(run_dirs)} run dirs with {RUN_CONFIG}, none with a "
                          f"{LOSS_KEY} at its final step in {RUN_METRICS}); "
                          f"run the sweep's `gptjax train` commands first")
    return points


def _field(record: dict, field: str, where: str) -> float:
    for key in COLUMNS[field]:
        if key in record and record[key] not in ("", None):
            try:
                return float(record[key])
            except (TypeError, ValueError):
                raise GptjaxError(f"{where}: {key}={record[key]!r} is not a number") from None
    raise GptjaxError(f"{where}: no {field} value (columns/keys: {', '.join(COLUMNS[field])})")


def read_points_file(path: str | Path) -> list[LossPoint]:
    """Points from a CSV with a header (params,tokens,loss[,name]) or a JSON list of such objects."""
    path = Path(path)
    if path.suffix == ".json":
        records = fileio.read_json(path, "points file", "pass a JSON list of {params, tokens, loss} objects")
        if isinstance(records, dict) and isinstance(records.get("points"), list):
            records = records["points"]
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise GptjaxError(f"{path}: expected a JSON list of {{params, tokens, loss}} objects")
    elif path.suffix == ".csv":
        with open(path, newline="") as f:
            records = list(csv.DictReader(f))
    else:
        raise GptjaxError(f"{path}: points must be a .csv or .json file (or pass a sweep directory)")
    return [LossPoint(_field(r, "params", f"{path} point {i + 1}"), _field(r, "tokens", f"{path} point {i + 1}"),
                      _field(r, "loss", f"{path} point {i + 1}"), str(r.get("name", "")))
            for i, r in enumerate(records)]


def read_points(source: str | Path, param_kind: str = "total") -> list[LossPoint]:
    """Points from a sweep/runs directory or a points file."""
    source = Path(source)
    if source.is_dir():
        return read_runs(source, param_kind)
    if not source.is_file():
        raise GptjaxError(f"--runs {source} does not exist; pass a sweep directory or a CSV/JSON points file")
    return read_points_file(source)


def check_points(points: Sequence[LossPoint], minimum: int, purpose: str) -> None:
    """Raises unless there are at least `minimum` points, all with finite, positive N, D and loss."""
    for i, point in enumerate(points):
        if not all(math.isfinite(v) and v > 0 for v in (point.params, point.tokens, point.loss)):
            raise GptjaxError(f"point {i + 1}{f' ({point.name})' if point.name else ''}: params, tokens and loss must "
                              f"be finite and > 0, got N={point.params:g}, D={point.tokens:g}, loss={point.loss:g}")
    if len(points) < minimum:
        raise GptjaxError(f"{purpose} needs at least {minimum} points, got {len(points)}; add runs (more sizes or "
                          f"token budgets)")
