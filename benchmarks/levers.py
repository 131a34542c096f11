"""Memory/speed levers: per-chip memory of big configs on TPU slices with one lever changed at a time, from
`gptjax compile-check` (the real train step AOT-compiled for the topology on this CPU-only machine, libtpu).

For each (config, topology) a baseline row (the config as written: its remat, scan, dtype, grad_accum and its
mesh, fsdp over all chips) and one row per lever: scan over layers off, each other remat policy, two gradient
accumulation factors, float32 compute, pure data parallelism, tensor parallelism (4 and 8, fsdp the rest), and one
two-lever rows (full remat + each of those gradient accumulations) for slices where no single lever fits. Each
row is one `python -m gptjax compile-check` subprocess, run one after another; their output is parsed into the
markdown table. attention_impl stays as the config sets it (auto: splash on TPU; the script checks splash can
serve the config and says so in the header).

Run from the repository root (needs libtpu: pip install -e '.[tpu]'):

    python benchmarks/levers.py [--configs gpt2_1.5b llama_7b] [--topologies v5p-64 v4-32] [--levers ...]
                                [--timeout 300] [--out benchmarks/results/levers.md]
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "levers.md"
DEFAULT_CONFIGS = ("gpt2_1.5b", "llama_7b")
DEFAULT_TOPOLOGIES = ("v5p-64", "v4-32")
LEVER_NAMES = ("baseline", "no_scan", "remat", "grad_accum", "float32", "data_parallel", "tensor", "combined")
GIB = 1 << 30
REFUSED = "the compiler refused: out of HBM"


@dataclasses.dataclass(frozen=True)
class Lever:
    """One row: a change from the config as written (`overrides` and/or `mesh`), or none for the baseline."""

    label: str
    overrides: tuple[str, ...] = ()
    mesh: str | None = None


@dataclasses.dataclass(frozen=True)
class Row:
    """One compile-check run, parsed. Sizes in bytes; None where the run did not report them."""

    lever: Lever
    command: list[str]
    mesh: str = ""
    arguments: float | None = None
    temporaries: float | None = None
    total: float | None = None
    hbm: float | None = None
    fits: str = ""
    compile_s: float | None = None
    wall_s: float = 0.0
    step_s_at_40: float | None = None
    note: str = ""  # a refusal, an error or a timeout, one line


def microbatch_accums(batch_size: int, batch_shards: int, count: int = 2) -> list[int]:
    """The first `count` grad_accum factors > 1 that keep the microbatch divisible by the batch-sharding devices."""
    per_device = batch_size // batch_shards
    return [a for a in range(2, per_device + 1) if per_device % a == 0][:count]


def levers_for(cfg, chips: int, names: tuple[str, ...]) -> list[Lever]:
    """The rows for a config on `chips` chips, in the order of `names`: the baseline, or one lever changed."""
    from gptjax.config import REMAT_POLICIES

    m, t = cfg.model, cfg.train
    rows = {
        "baseline": [Lever(f"baseline (remat {m.remat}, scan {'on' if m.scan_layers else 'off'}, {m.dtype}, "
                           f"grad_accum {t.grad_accum})")],
        "no_scan": [Lever(f"scan over layers {'off' if m.scan_layers else 'on'}",
                          (f"--config.model.scan_layers={not m.scan_layers}",))],
        "remat": [Lever(f"remat {p}", (f"--config.model.remat={p}",)) for p in REMAT_POLICIES if p != m.remat],
        "grad_accum": [Lever(f"grad_accum {a}", (f"--config.train.grad_accum={a}",))
                       for a in microbatch_accums(t.batch_size, chips)],
        "float32": [Lever("float32 compute", ("--config.model.dtype=float32",))] if m.dtype != "float32" else [],
        "data_parallel": [Lever("pure data parallel", mesh="data=-1,fsdp=1,tensor=1")],
        "tensor": [Lever(f"tensor parallel {n}", mesh=f"data=1,fsdp=-1,tensor={n}") for n in (4, 8) if chips % n == 0],
        "combined": [Lever(f"remat full + grad_accum {a}",
                           ("--config.model.remat=full", f"--config.train.grad_accum={a}"))
                     for a in microbatch_accums(t.batch_size, chips)],
    }
    return [lever for name in names for lever in rows[name]]


def compile_check_command(config: str, topology: str, lever: Lever) -> list[str]:
    cmd = [sys.executable, "-m", "gptjax", "compile-check", "--config", f"experiments/{config}.py",
           "--topology", topology]
    if lever.mesh:
        cmd += ["--mesh", lever.mesh]
    return cmd + list(lever.overrides)


def size_bytes(text: str) -> float:
    """'1.20 GiB' / '46.11 MiB' / '85.17G' (the compiler's GiB) in bytes."""
    value, unit = re.fullmatch(r"([\d.]+) ?(GiB|MiB|G|M)", text.strip()).groups()
    return float(value) * (GIB if unit.startswith("G") else 1 << 20)


def parse_report(stdout: str) -> dict:
    """The fields of compile-check's report that the table shows."""
    fields: dict = {}
    if match := re.search(r"; mesh (data=\d+ fsdp=\d+ tensor=\d+),", stdout):
        fields["mesh"] = match.group(1)
    if match := re.search(r"^compile time: ([\d.]+) s", stdout, re.M):
        fields["compile_s"] = float(match.group(1))
    if match := re.search(r"^per device: arguments (.+?), temporaries (.+?), outputs", stdout, re.M):
        fields["arguments"], fields["temporaries"] = map(size_bytes, match.groups())
    if match := re.search(r"^per device: total (.+?) of (.+?) HBM", stdout, re.M):
        fields["total"], fields["hbm"] = map(size_bytes, match.groups())
    if match := re.search(r"step time ([\d.e+]+) s at 40% MFU", stdout):
        fields["step_s_at_40"] = float(match.group(1))
    if match := re.search(r"^fits: (yes|no)(?: \((.*)\))?$", stdout, re.M):
        fields["fits"] = match.group(1)
        # Refused: the compiler names only the temporaries it needed, a lower bound on the total.
        if refusal := re.search(r"HLO temporaries \(([\d.]+[GM])\) exceeds available HBM", match.group(2) or ""):
            fields["temporaries"] = fields["total"] = size_bytes(refusal.group(1))
            fields["note"] = REFUSED
    return fields


def run_row(config: str, topology: str, lever: Lever, hbm: float, timeout: float) -> Row:
    """Runs one compile-check and parses it; a timeout or an error becomes the row's note."""
    cmd = compile_check_command(config, topology, lever)
    started = time.perf_counter()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Row(lever, cmd, mesh=lever.mesh or "", fits="?", wall_s=time.perf_counter() - started,
                   note=f"not compiled (timeout after {timeout:.0f} s)")
    wall = time.perf_counter() - started
    fields = parse_report(proc.stdout)
    if fields.get("note") == REFUSED:
        fields["hbm"] = hbm
    if "fits" not in fields:
        lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
        fields["note"] = f"error (exit {proc.returncode}): {lines[-1][:300] if lines else 'no output'}"
    return Row(lever, cmd, wall_s=wall, **fields)


def splash_note(cfg) -> str:
    """Whether attention_impl=auto compiles splash attention for a TPU target with this config."""
    from gptjax.model.attention import kernel_unsupported_reason

    if cfg.model.attention_impl != "auto":
        return f"attention_impl={cfg.model.attention_impl} (as the config sets it)"
    reason = kernel_unsupported_reason("splash", cfg.model, "tpu", cfg.model.block_size, decoding=False,
                                       dropout=cfg.model.dropout > 0, packed=False)
    if reason:
        return f"attention_impl=auto → xla ({reason})"
    return "attention_impl=auto → splash (Pallas) on TPU"


def gib_cell(n_bytes: float | None, hbm: float | None, at_least: bool = False) -> str:
    if n_bytes is None:
        return "–"
    percent = f" ({100 * n_bytes / hbm:.0f}%)" if hbm else ""
    return f"{'≥' if at_least else ''}{n_bytes / GIB:.2f}{percent}"


def table_lines(rows: list[Row]) -> list[str]:
    out = ["| lever | mesh | arguments GiB | temporaries GiB | total per chip GiB (% HBM) | fits | compile s | "
           "step s at 40% MFU | note |",
           "|---|---|---:|---:|---:|---|---:|---:|---|"]
    for r in rows:
        refused = r.note == REFUSED
        wall = f"({r.wall_s:.0f} wall)" if r.wall_s else "–"
        compile_cell = f"{r.compile_s:.0f}" if r.compile_s is not None else wall
        step = f"{r.step_s_at_40:.3g}" if r.step_s_at_40 is not None else "–"
        mesh = r.mesh or (r.lever.mesh or "").replace(",", " ")
        sizes = " | ".join((gib_cell(r.arguments, None), gib_cell(r.temporaries, None, refused),
                            gib_cell(r.total, r.hbm, refused)))
        out.append(f"| {r.lever.label} | {mesh} | {sizes} | {r.fits or '?'} | {compile_cell} | {step} | {r.note} |")
    return out


def command_text(cmd: list[str]) -> str:
    return shlex.join(["python", *cmd[1:]])


def versions() -> str:
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return f"jax {version('jax')}, jaxlib {version('jaxlib')}, libtpu {version('libtpu')}, flax {version('flax')}"


def main() -> None:
    from gptjax.config import load_experiment, to_config
    from gptjax.train.compile_check import parse_topology

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="experiments/NAME.py names")
    p.add_argument("--topologies", nargs="+", default=list(DEFAULT_TOPOLOGIES))
    p.add_argument("--levers", nargs="+", default=list(LEVER_NAMES), choices=LEVER_NAMES)
    p.add_argument("--timeout", type=float, default=300, help="seconds per compile-check before it is killed")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args()

    invocation = shlex.join(["python", "benchmarks/levers.py", *sys.argv[1:]])
    for config in args.configs:
        cfg = to_config(load_experiment(REPO_ROOT / "experiments" / f"{config}.py"))
        for topology_name in args.topologies:
            topology = parse_topology(topology_name)
            started = datetime.datetime.now(datetime.timezone.utc)
            rows = []
            for lever in levers_for(cfg, topology.chips, tuple(args.levers)):
                row = run_row(config, topology_name, lever, topology.chip.hbm_bytes, args.timeout)
                print(f"{config} {topology_name} {lever.label}: fits {row.fits or '?'}, total "
                      f"{gib_cell(row.total, row.hbm)} GiB, {row.wall_s:.0f} s {row.note}", flush=True)
                rows.append(row)
            write_section(args.out, section_lines(config, cfg, topology, rows, started, invocation))


def section_lines(config: str, cfg, topology, rows: list[Row], started: datetime.datetime,
                  invocation: str) -> list[str]:
    """One (config, topology)'s heading, table and the exact commands of its rows."""
    hbm = topology.chip.hbm_bytes
    step = next((r.step_s_at_40 for r in rows if r.step_s_at_40), None)
    return [f"{SECTION_MARK}{config} on {topology} — {topology.chips} chips × {hbm / GIB:.0f} GiB HBM", "",
            f"batch {cfg.train.batch_size} × context {cfg.model.block_size}; {splash_note(cfg)}"
            + (f"; {step:.3g} s/step at 40% MFU (model FLOPs, the same for every row)" if step else "")
            + f". Run {started:%Y-%m-%d %H:%M} UTC by `{invocation}`.", "",
            *table_lines(rows), "", "```bash", *(command_text(r.command) for r in rows), "```", ""]


SECTION_MARK = "## "


def sections_of(text: str) -> dict[str, list[str]]:
    """An existing results file's (config, topology) sections by heading."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(SECTION_MARK):
            current = sections.setdefault(line, [])
        if current is not None:
            current.append(line)
    return sections


def write_section(out: Path, section: list[str]) -> None:
    """Writes `section` into the results file, replacing a section of the same heading and keeping the others (a
    run of some configs or topologies updates only theirs); written after every section, so a long run that is
    stopped keeps its finished part."""
    sections = sections_of(out.read_text()) if out.is_file() else {}
    sections[section[0]] = section
    header = [
        "# Memory/speed levers: per-chip memory from compile-check", "",
        "Command (from the repository root): `python benchmarks/levers.py [--configs ...] [--topologies ...] "
        "[--levers ...]`; each section says when and by which invocation it was made.", "",
        f"Each row is one `gptjax compile-check` (AOT compile of the real train step for the TPU topology, on "
        f"{platform.machine()} with {os.cpu_count()} CPUs, {versions()}), the config as written except the one "
        "lever named. Sizes are XLA's per-device memory plan: arguments (params, optimizer state, batch), "
        "temporaries (activations, gradients, collectives' buffers), total = arguments + outputs + temporaries + "
        "code − outputs aliased with arguments. Where the compiler refused (out of HBM) it reports only the "
        "temporaries it needed, a lower bound on the total (≥). "
        "Step time = analytic model FLOPs per step / (chips × bf16 peak × 0.4): it does not count remat's "
        "recompute (full remat executes ~8/6 of it) or float32's slower matmuls. Compile s: XLA's compile time "
        "(for refusals the subprocess's wall time).", "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(header + [line for lines in sections.values() for line in lines]) + "\n")


if __name__ == "__main__":
    main()
