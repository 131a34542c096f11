"""The device mesh from config (over several TPU slices: data parallelism across them), and the CPU host split
into per-core devices."""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh

from gptjax.config import MeshConfig
from gptjax.errors import GptjaxError
from gptjax.parallel.rules import MESH_AXES


def mesh_shape(cfg: MeshConfig, n_devices: int) -> tuple[int, int, int]:
    """Resolves -1 entries so the product equals the device count; errors name the sizes involved."""
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    unknown = [i for i, s in enumerate(sizes) if s == -1]
    if len(unknown) > 1:
        raise GptjaxError(f"mesh: at most one axis may be -1, got data={cfg.data} fsdp={cfg.fsdp} tensor={cfg.tensor}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if unknown:
        if n_devices % known:
            raise GptjaxError(f"mesh: {n_devices} devices do not divide by the fixed axes' product {known}")
        sizes[unknown[0]] = n_devices // known
    if int(np.prod(sizes)) != n_devices:
        raise GptjaxError(f"mesh: data*fsdp*tensor = {int(np.prod(sizes))} but there are {n_devices} devices; "
                          f"set one axis to -1 to infer it")
    return tuple(sizes)


def slice_count(devices: list) -> int:
    """TPU slices the devices span (1 for one slice, or where devices carry no slice index)."""
    return len({getattr(d, "slice_index", 0) for d in devices})


def make_mesh(cfg: MeshConfig, devices: list | None = None) -> Mesh:
    """A (data, fsdp, tensor) Mesh with Auto axis types; topology-aware device order on TPU.

    Over several TPU slices the data axis spans them (only gradients cross the slower DCN links, once a step):
    data = slices x data-parallel groups inside each slice."""
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(cfg, len(devices))
    if devices[0].platform == "tpu":
        from jax.experimental import mesh_utils

        slices = slice_count(devices)
        if slices == 1:
            device_grid = mesh_utils.create_device_mesh(shape, devices=devices)
        else:
            if shape[0] % slices:
                raise GptjaxError(f"mesh: data={shape[0]} must divide by the {slices} TPU slices (data parallelism "
                                  f"spans slices); set mesh.data to a multiple of {slices}")
            ici_shape = (shape[0] // slices, shape[1], shape[2])
            device_grid = mesh_utils.create_hybrid_device_mesh(ici_shape, (slices, 1, 1), devices=devices)
    else:
        device_grid = np.array(devices).reshape(shape)
    return Mesh(device_grid, MESH_AXES)


def cpu_device_count(requested: int, microbatch: int, cores: int) -> int:
    """`requested`, or the most devices (at most one per core) that evenly split the microbatch."""
    if requested:
        return requested
    return max(d for d in range(1, max(cores, 1) + 1) if microbatch % d == 0)


def configure_cpu_devices(requested: int, microbatch: int) -> int | None:
    """Splits the host CPU into several XLA devices, each single-threaded, used as data parallelism.

    XLA's CPU backend runs the small ops of a training step one after another; one device per core with
    single-threaded Eigen keeps every core busy instead (about 1.5x faster steps on 2 cores). Only the CPU
    backend is affected, so this is harmless where an accelerator is present. It must run before JAX starts
    its backends; it does nothing after that, or when XLA_FLAGS already sets a host device count."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return None
    n = cpu_device_count(requested, microbatch, os.cpu_count() or 1)
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        return None
    if n > 1 and "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()
    return n
