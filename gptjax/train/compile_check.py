"""Will a config fit a Cloud TPU slice? Compile its real train step ahead of time for that topology, here, without one.

`compile_check(cfg, "v5p-64")` builds compile-only TPU devices with libtpu (`pip install -e '.[tpu]'`), a mesh over
them, lowers and compiles `build_step(cfg, mesh).lower_train()`, and reports XLA's per-device memory plan against
the chip's HBM, the compile time, the analytic FLOPs per step and the step time they imply at 40% / 60% MFU.
`search` compiles mesh splits x remat policies x gradient accumulation and keeps the ones that fit.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import time
from typing import Iterator

from gptjax.config import REMAT_POLICIES, Config, MeshConfig
from gptjax.errors import GptjaxError

GIB = 1 << 30
MFUS = (0.4, 0.6)
GPT2_BPE_VOCAB = 50257


@dataclasses.dataclass(frozen=True)
class ChipKind:
    """A TPU generation as Cloud names it: HBM per chip, TensorCores counted per chip in names like v4-32."""

    name: str
    hbm_bytes: int
    cores_per_chip_in_name: int
    grid_dims: int  # 2 (v5e, v6e: NxM) or 3 (v4, v5p: NxMxK)
    chip_config: str | None = None  # libtpu's chip config (megacore: one device per chip)


CHIPS = {
    "v4": ChipKind("v4", 32 * GIB, 2, 3, "megacore"),
    "v5p": ChipKind("v5p", 95 * GIB, 2, 3, "megacore"),
    "v5e": ChipKind("v5e", 16 * GIB, 1, 2),
    "v6e": ChipKind("v6e", 32 * GIB, 1, 2),
}
ALIASES = {"v5litepod": "v5e"}
MAX_CHIPS = 8192


@dataclasses.dataclass(frozen=True)
class Topology:
    """A slice (or several identical slices) of one chip kind in a chip grid."""

    chip: ChipKind
    grid: tuple[int, ...]
    slices: int = 1

    @property
    def chips(self) -> int:
        return math.prod(self.grid) * self.slices

    @property
    def jax_name(self) -> str:
        return f"{self.chip.name}:{'x'.join(map(str, self.grid))}"

    @property
    def cloud_name(self) -> str:
        return f"{self.chip.name}-{math.prod(self.grid) * self.chip.cores_per_chip_in_name}"

    @property
    def accelerator_type(self) -> str:
        """One slice's name as libtpu reads it from TPU_ACCELERATOR_TYPE (v5e is v5litepod there)."""
        return self.cloud_name.replace("v5e-", "v5litepod-")

    def __str__(self) -> str:
        cloud = self.cloud_name
        return (f"{self.slices}x{cloud} ({self.slices} x {self.jax_name})" if self.slices > 1
                else f"{cloud} ({self.jax_name})")


def slice_grid(chip: ChipKind, chips: int) -> tuple[int, ...] | None:
    """The chip grid Cloud TPU gives a slice of `chips` chips (2x2, 2x4, 4x4, ...; 2x2x1, 2x2x2, 2x2x4, 2x4x4, ...),
    or None when no slice has that many."""
    if chips == 1:
        return (1,) * chip.grid_dims
    grid = [2, 2] + [1] * (chip.grid_dims - 2)
    while math.prod(grid) < chips:
        smallest = min(grid)
        grid[max(i for i, g in enumerate(grid) if g == smallest)] *= 2  # Cloud grows the last smallest side
    return tuple(grid) if math.prod(grid) == chips else None


def known_names() -> str:
    examples = []
    for chip in CHIPS.values():
        sizes = [n * chip.cores_per_chip_in_name for n in (1, 4, 8, 16, 32, 64, 128, 256)
                 if slice_grid(chip, n) and (n > 1 or chip.grid_dims == 2)]
        examples.append(f"{chip.name}-{{{','.join(map(str, sizes))},...}}")
    return (f"Cloud names {'; '.join(examples)} (v5litepod-N = v5e-N), several slices as 2xv5e-16, "
            f"or jax topology strings like v5e:4x4, v4:2x2x4, 2xv5p:2x2x4")


def parse_topology(name: str) -> Topology:
    """A Cloud TPU name (v4-32, v5p-128, v5e-16, v5litepod-16, v6e-16, 2xv5e-16) or a jax topology string (v5e:4x4)."""
    unknown = GptjaxError(f"unknown TPU topology {name!r}; known: {known_names()}")
    match = re.fullmatch(r"(?:(\d+)x)?([a-z0-9]+?)(?:-(\d+)|:(\d+(?:x\d+)+))", name.strip().lower())
    if not match:
        raise unknown
    slices, kind, cloud_size, grid_text = match.groups()
    chip = CHIPS.get(ALIASES.get(kind, kind))
    if chip is None or (slices is not None and int(slices) < 1):
        raise unknown
    if grid_text:
        grid = tuple(int(g) for g in grid_text.split("x"))
        if len(grid) != chip.grid_dims:
            raise GptjaxError(f"{name}: a {chip.name} grid has {chip.grid_dims} sides, e.g. "
                              f"{chip.name}:{'x'.join(['2'] * chip.grid_dims)}")
    else:
        chips, odd_cores = divmod(int(cloud_size), chip.cores_per_chip_in_name)
        grid = None if odd_cores else slice_grid(chip, chips)
        if grid is None or math.prod(grid) > MAX_CHIPS:
            raise unknown
    return Topology(chip, grid, int(slices or 1))


def topology_devices(topology: Topology) -> list:
    """Compile-only TPU devices of `topology` (libtpu must be installed; no TPU needed)."""
    try:
        import libtpu  # noqa: F401  (only to say what is missing)
    except ImportError:
        raise GptjaxError("compile-check needs libtpu: pip install -e '.[tpu]' (jax[tpu] of the installed jax "
                          "version)") from None
    # Not on a TPU VM: no metadata server to ask and no lock to take (another process may hold libtpu's); naming
    # the host and accelerator keeps libtpu from warning that it could not find them.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology.accelerator_type)
    from jax.experimental import topologies

    options: dict = {}
    if topology.chip.chip_config:
        options["chip_config_name"] = topology.chip.chip_config
    if math.prod(topology.grid) < 4:
        options["chips_per_host_bounds"] = topology.grid + (1,) * (3 - len(topology.grid))
    if topology.slices > 1:
        options["num_slices"] = topology.slices
    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=topology.jax_name, **options).devices)
    except Exception as error:  # libtpu rejects a grid it has no layout for
        raise GptjaxError(f"libtpu cannot build {topology}: {str(error).splitlines()[0][:200]}") from None


def parse_mesh(text: str, base: MeshConfig) -> MeshConfig:
    """`data=1,fsdp=-1,tensor=4` applied to `base`; unknown axes and non-integers are errors."""
    sizes = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        axis, sep, value = part.partition("=")
        if not sep or axis not in ("data", "fsdp", "tensor") or not re.fullmatch(r"-?\d+", value):
            raise GptjaxError(f"--mesh {text!r}: expected data=N,fsdp=N,tensor=N (one of them may be -1), "
                              f"got {part!r}")
        sizes[axis] = int(value)
    return dataclasses.replace(base, **sizes)


def with_known_vocab(cfg: Config) -> Config:
    """The config with a concrete vocabulary: model.vocab_size, else data.vocab_size, else GPT-2's for gpt2_bpe."""
    vocab = cfg.model.vocab_size or cfg.data.vocab_size or (GPT2_BPE_VOCAB if cfg.data.tokenizer == "gpt2_bpe" else 0)
    if not vocab:
        raise GptjaxError("compile-check needs the vocabulary size, which this config takes from its data; set "
                          "--config.model.vocab_size=N")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))


def sharding_problem(cfg: Config, shape: dict[str, int]) -> str | None:
    """Why the mesh `shape` cannot shard `cfg` evenly (a mesh axis that does not divide the dimension it shards)."""
    m, t = cfg.model, cfg.train
    microbatch = t.batch_size // t.grad_accum
    checks = (
        (shape["data"] * shape["fsdp"], microbatch, "data*fsdp", "the microbatch (train.batch_size / grad_accum)"),
        (shape["tensor"], m.n_head, "tensor", "model.n_head"),
        (shape["tensor"], m.ff_dim, "tensor", "the MLP width (model.d_ff)"),
        (shape["fsdp"], m.d_model, "fsdp", "model.d_model"),
        (shape["fsdp"], m.moe_experts, "fsdp", "model.moe_experts (experts are sharded over fsdp)"),
        (shape["tensor"], m.moe_ff_dim if m.moe_experts else 0, "tensor", "the expert width (model.moe_d_ff)"),
    )
    for size, dim, axis, what in checks:
        if dim % size:
            return f"mesh {axis}={size} does not divide {what}={dim}"
    return None


def memory_size(n_bytes: int) -> str:
    """GiB with two decimals, or MiB below one GiB (a small model's figures stay readable)."""
    return f"{n_bytes / GIB:.2f} GiB" if n_bytes >= GIB else f"{n_bytes / (1 << 20):.2f} MiB"


@dataclasses.dataclass(frozen=True)
class Report:
    """One compile: the plan's per-device memory, compile time, and the analytic step cost."""

    cfg: Config
    topology: Topology
    mesh: dict[str, int]
    device_kind: str
    arguments: int
    outputs: int
    temporaries: int
    aliased: int
    code: int
    compile_s: float
    flops_per_step: float
    peak_flops: float
    error: str | None = None  # the compiler's refusal (e.g. out of HBM)

    @property
    def total(self) -> int:
        return self.arguments + self.outputs + self.temporaries + self.code - self.aliased

    @property
    def fits(self) -> bool:
        return self.error is None and self.total <= self.topology.chip.hbm_bytes

    def step_seconds(self, mfu: float) -> float:
        return self.flops_per_step / (self.topology.chips * self.peak_flops * mfu) if self.peak_flops else math.nan

    def settings(self) -> str:
        m, t = self.cfg.model, self.cfg.train
        mesh = " ".join(f"{k}={v}" for k, v in self.mesh.items())
        return f"mesh {mesh}, remat {m.remat}, grad_accum {t.grad_accum}"

    def verdict(self) -> str:
        hbm = self.topology.chip.hbm_bytes / GIB
        if self.error:
            return f"fits: no ({self.error})"
        word = "yes" if self.fits else "no"
        return f"fits: {word} ({memory_size(self.total)} of {hbm:.0f} GiB HBM per device, {self.settings()})"

    def lines(self) -> list[str]:
        gib = memory_size
        hbm = self.topology.chip.hbm_bytes
        out = [f"{self.cfg.name} on {self.topology}: {self.topology.chips} x {self.device_kind}, "
               f"{hbm / GIB:.0f} GiB HBM each; {self.settings()}"]
        if self.error is None:
            out += [f"compile time: {self.compile_s:.1f} s",
                    f"per device: arguments {gib(self.arguments)}, temporaries {gib(self.temporaries)}, "
                    f"outputs {gib(self.outputs)} ({gib(self.aliased)} aliased with arguments), code {gib(self.code)}",
                    f"per device: total {gib(self.total)} of {gib(hbm)} HBM ({100 * self.total / hbm:.0f}%)"]
        times = ", ".join(f"{self.step_seconds(u):.3g} s at {100 * u:.0f}% MFU" for u in MFUS)
        out.append(f"FLOPs per step: {self.flops_per_step:.3e} "
                   f"(analytic, {self.flops_per_step / self.topology.chips:.3e}"
                   f" per device); step time {times}")
        return out + [self.verdict()]


def _out_of_memory(error: Exception) -> str | None:
    """The compiler's out-of-HBM refusal as one line, or None for any other error."""
    text = str(error)
    if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
        return None
    return f"the compiler ran out of HBM: {text.strip().splitlines()[0][:300]}"


def compile_report(cfg: Config, topology: Topology, devices: list) -> Report:
    """Compiles `cfg`'s train step for `devices` (a mesh from cfg.mesh) and reads XLA's memory plan."""
    from gptjax.model.transformer import flops_per_token
    from gptjax.parallel.mesh import make_mesh
    from gptjax.train.metrics import peak_flops_of_kind
    from gptjax.train.step import build_step

    mesh = make_mesh(cfg.mesh, devices)
    shape = dict(mesh.shape)
    problem = sharding_problem(cfg, shape)
    if problem:
        raise GptjaxError(f"{problem}; choose --mesh sizes that divide it (or --search)")
    kind = devices[0].device_kind
    tokens = cfg.train.batch_size * cfg.model.block_size
    common = dict(cfg=cfg, topology=topology, mesh=shape, device_kind=kind,
                  flops_per_step=flops_per_token(cfg.model, cfg.model.block_size) * tokens,
                  peak_flops=peak_flops_of_kind(kind))
    started = time.perf_counter()
    try:
        compiled = build_step(cfg, mesh).lower_train().compile()
    except Exception as error:
        reason = _out_of_memory(error)
        if reason is None:
            raise
        return Report(**common, arguments=0, outputs=0, temporaries=0, aliased=0, code=0,
                      compile_s=time.perf_counter() - started, error=reason)
    seconds = time.perf_counter() - started
    memory = compiled.memory_analysis()
    return Report(**common, arguments=memory.argument_size_in_bytes, outputs=memory.output_size_in_bytes,
                  temporaries=memory.temp_size_in_bytes, aliased=memory.alias_size_in_bytes,
                  code=memory.generated_code_size_in_bytes, compile_s=seconds)


def compile_check(cfg: Config, topology_name: str, mesh: str | None = None) -> Report:
    """The report of `cfg` compiled for `topology_name`, on cfg.mesh or the `--mesh` string `mesh`."""
    topology = parse_topology(topology_name)
    cfg = with_known_vocab(cfg)
    if mesh:
        cfg = dataclasses.replace(cfg, mesh=parse_mesh(mesh, cfg.mesh))
    return compile_report(cfg, topology, topology_devices(topology))


# Forward+backward FLOPs executed per 6·N model FLOPs: full remat reruns the forward pass (8/6); the others
# save the matmul outputs and rerun only cheap elementwise work.
RECOMPUTE = {"none": 1.0, "save_dots": 1.0, "save_attn_out": 1.0 + 1 / 6, "full": 8 / 6}
STATE_BYTES_PER_PARAM = 16  # float32 param + gradient + two Adam moments


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def state_bytes_per_device(n_params: int, mesh: MeshConfig) -> float:
    """Params, gradients and Adam moments per device when the params are split fsdp x tensor ways."""
    return n_params * STATE_BYTES_PER_PARAM / (mesh.fsdp * mesh.tensor)


def candidates(cfg: Config, n_devices: int, hbm_bytes: float, slices: int = 1, max_tensor: int = 8) -> list[Config]:
    """Mesh splits x remat policies x grad_accum that shard `cfg` evenly and whose training state alone leaves
    room in `hbm_bytes`, fastest-looking first: least recompute, then fewest microbatches, then least tensor
    parallelism (its all-reduces sit on the critical path), then parameters sharded over the most devices. Per
    tensor size the meshes tried are the two ends: fully sharded (data = slices) and fully replicated (fsdp = 1)."""
    import flax.linen as nn

    from gptjax.model.transformer import abstract_params, count_params

    n_params = count_params(nn.unbox(abstract_params(cfg.model)))
    out = []
    for tensor, accum, remat in itertools.product(_divisors(n_devices), _divisors(cfg.train.batch_size),
                                                  REMAT_POLICIES):
        if tensor > max_tensor or accum > 16 or (n_devices // tensor) % slices:
            continue
        for data in sorted({slices, n_devices // tensor}):
            mesh = MeshConfig(data=data, fsdp=n_devices // tensor // data, tensor=tensor)
            if state_bytes_per_device(n_params, mesh) > hbm_bytes:
                continue
            option = dataclasses.replace(cfg, mesh=mesh, model=dataclasses.replace(cfg.model, remat=remat),
                                         train=dataclasses.replace(cfg.train, grad_accum=accum))
            if sharding_problem(option, dataclasses.asdict(mesh)) is None:
                out.append(option)
    return sorted(out, key=lambda c: (RECOMPUTE[c.model.remat], c.train.grad_accum, c.mesh.tensor, c.mesh.data))


def search(cfg: Config, topology_name: str, max_compiles: int = 24, want: int = 3) -> Iterator[Report]:
    """Compiles candidates in `candidates` order and yields each that fits, until `want` fit or `max_compiles` ran."""
    topology = parse_topology(topology_name)
    devices = topology_devices(topology)
    options = candidates(with_known_vocab(cfg), len(devices), topology.chip.hbm_bytes, topology.slices)
    for option in options[:max_compiles]:
        report = compile_report(option, topology, devices)
        if report.fits:
            yield report
            want -= 1
            if not want:
                return
