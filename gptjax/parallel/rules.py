"""THE logical-axis rules table: the one place that says how named tensor axes map onto the device mesh.

Parameters and activations carry logical axis names (`nn.with_logical_partitioning`, `constrain`); this table
maps them to the mesh axes `data`, `fsdp` and `tensor`. Parameter shardings are resolved with their shapes, so an
axis that does not divide evenly (e.g. one KV head over 2-way tensor parallelism) is replicated instead.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # activations
    ("batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("act_expert", "fsdp"),  # capacity dispatch: the [E, B, C, D] tokens of each expert live with its weights
    ("act_expert_batch", "data"),  # ... and their rows stay split over data
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("expert", "fsdp"),  # expert parallelism: each fsdp shard holds whole experts (model.moe_experts must divide it)
    ("positions", None),
    ("norm", None),
    ("layers", None),
    ("lora", None),
    ("classes", None),
)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Pins an activation's sharding by logical axis names (a no-op outside `use_rules`)."""
    return nn.with_logical_constraint(x, tuple(axes))


@contextlib.contextmanager
def use_rules(mesh: Mesh) -> Iterator[None]:
    """Makes `mesh` and RULES current, so logical constraints inside jit resolve to mesh axes."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
        yield


def target_platform() -> str:
    """The platform the traced computation will run on: the current mesh's devices (the compile-check topology's
    TPUs included), else the default backend. Not the host's devices: an AOT compile targets another platform."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else mesh.abstract_device
    return device.platform if device is not None else jax.default_backend()


def _mesh_axes_for(name: str | None) -> tuple[str, ...]:
    if name is None:
        return ()
    for logical, physical in RULES:
        if logical == name:
            if physical is None:
                return ()
            return (physical,) if isinstance(physical, str) else tuple(physical)
    raise KeyError(f"logical axis '{name}' has no entry in gptjax.parallel.rules.RULES")


def spec_for(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """PartitionSpec for an array of `shape` with `logical_axes`; mesh axes that don't divide a dim are dropped."""
    used: set[str] = set()
    entries = []
    for name, dim in zip(logical_axes, shape):
        kept = []
        for axis in _mesh_axes_for(name):
            size = mesh.shape[axis]
            if axis in used or size == 1:
                continue
            if dim % (int(np.prod([mesh.shape[a] for a in kept])) * size) == 0:
                kept.append(axis)
        used.update(kept)
        entries.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
    return PartitionSpec(*entries)


def tree_shardings(abstract_tree, mesh: Mesh):
    """NamedShardings for a tree of abstract arrays whose leaves may be wrapped in nn.Partitioned metadata."""

    def one(leaf):
        if isinstance(leaf, nn.Partitioned):
            value = leaf.value
            return NamedSharding(mesh, spec_for(leaf.names, value.shape, mesh))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map(one, abstract_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a [batch, ...] input array of any rank: batch over data and fsdp, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
