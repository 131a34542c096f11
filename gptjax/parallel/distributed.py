"""Joining a multi-process JAX run: which cluster the flags or the environment name, and starting it.

Every process runs the same `gptjax train` command with its own process id. The cluster comes from
`--coordinator HOST:PORT --num-processes N --process-id I`, else from GPTJAX_COORDINATOR / GPTJAX_NUM_PROCESSES /
GPTJAX_PROCESS_ID, else from `jax.distributed.initialize()`'s own detection (Cloud TPU VMs, SLURM, Open MPI).
`initialize` must run before anything starts a JAX backend. After it, JAX's distributed service watches the
processes: when one dies, the others are terminated once `heartbeat_timeout_s` passes without its heartbeat
(JAX prints "the JAX distributed service detected fatal errors ... another task died" and aborts), so no
process waits forever in a collective.
"""
from __future__ import annotations

import dataclasses
import hashlib
import socket
import sys
import time
from typing import Mapping

import jax
import numpy as np

from gptjax.errors import GptjaxError

ENV_COORDINATOR = "GPTJAX_COORDINATOR"
ENV_NUM_PROCESSES = "GPTJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "GPTJAX_PROCESS_ID"
INIT_TIMEOUT_S = 300
HEARTBEAT_TIMEOUT_S = 100


@dataclasses.dataclass(frozen=True)
class Cluster:
    """An explicitly named cluster: process `process_id` of `num_processes`, process 0 serving at `coordinator`."""

    coordinator: str
    num_processes: int
    process_id: int

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.coordinator.rpartition(":")
        return host.strip("[]"), int(port)


def _int_setting(value: str | int | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise GptjaxError(f"{name} must be an integer, got {value!r}") from None


def cluster_from(coordinator: str | None, num_processes: int | None, process_id: int | None,
                 environ: Mapping[str, str]) -> Cluster | None:
    """The cluster the flags (or, where a flag is absent, the GPTJAX_* environment) name; None when they name none.

    A single process (`--num-processes 1`) is no cluster."""
    coordinator = coordinator or environ.get(ENV_COORDINATOR) or None
    n = num_processes if num_processes is not None else _int_setting(environ.get(ENV_NUM_PROCESSES),
                                                                      ENV_NUM_PROCESSES)
    i = process_id if process_id is not None else _int_setting(environ.get(ENV_PROCESS_ID), ENV_PROCESS_ID)
    given = {"--coordinator": coordinator, "--num-processes": n, "--process-id": i}
    if all(v is None for v in given.values()):
        return None
    if n == 1 and coordinator is None:
        return None
    missing = [flag for flag, v in given.items() if v is None]
    if missing:
        raise GptjaxError(f"a multi-process run needs --coordinator HOST:PORT, --num-processes N and --process-id I "
                          f"(or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); "
                          f"missing {', '.join(missing)}")
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise GptjaxError(f"--coordinator {coordinator!r} must be HOST:PORT (process 0's address and a free port), "
                          f"e.g. 10.0.0.1:8476")
    if n < 1 or not 0 <= i < n:
        raise GptjaxError(f"--process-id {i} must be in [0, {n}) for --num-processes {n}")
    return Cluster(coordinator, n, i)


def environment_names_cluster() -> bool:
    """True when `jax.distributed.initialize()` with no arguments would find a cluster (TPU VM, SLURM, MPI, k8s)."""
    try:
        from jax._src.clusters import ClusterEnv  # jax's own detection; private, so a missing one means "no"
    except ImportError:
        return False
    return any(not env.opt_in_only_method and env.is_env_present() for env in ClusterEnv._cluster_types)


def wait_for_coordinator(cluster: Cluster, timeout_s: float) -> None:
    """Returns once process 0's coordinator accepts connections; a clear error after `timeout_s` seconds.

    JAX itself aborts the process with a stack dump when the coordinator never answers; this says why first."""
    host, port = cluster.host_port
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, timeout_s)):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise GptjaxError(
                    f"process {cluster.process_id} of {cluster.num_processes} could not reach the coordinator "
                    f"{cluster.coordinator} within {timeout_s:g} s ({error.strerror or error}); start process 0 "
                    f"(--process-id 0) on that host and port, check the address, or raise --init-timeout") from None
            time.sleep(0.5)


def initialize(cluster: Cluster | None, *, init_timeout_s: int = INIT_TIMEOUT_S,
               heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S) -> int:
    """Joins the cluster (explicit, or detected from the environment) and returns the number of processes.

    Must run before any JAX backend starts. A single process with no cluster in its environment does nothing."""
    if cluster is None and not environment_names_cluster():
        return 1
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes reduce over TCP
    timeouts = dict(initialization_timeout=init_timeout_s, heartbeat_timeout_seconds=heartbeat_timeout_s)
    try:
        if cluster is None:
            jax.distributed.initialize(**timeouts)
            from jax._src.distributed import global_state  # the detected count, without starting a backend

            return global_state.num_processes
        if cluster.process_id != 0:
            wait_for_coordinator(cluster, init_timeout_s)
        print(f"gptjax: process {cluster.process_id} of {cluster.num_processes} joining {cluster.coordinator} "
              f"(waiting up to {init_timeout_s} s for all processes)", file=sys.stderr, flush=True)
        jax.distributed.initialize(cluster.coordinator, cluster.num_processes, cluster.process_id, **timeouts)
    except RuntimeError as error:
        raise GptjaxError(f"cannot join the multi-process run: {error}; call it before anything uses JAX") from None
    return cluster.num_processes


MAX_STEPS_COMPARED = 64  # unreadable steps compared across processes (a run keeps far fewer checkpoints)


def config_digest(config_json: str) -> np.ndarray:
    """Eight uint32 words of the config's SHA-256: what the processes compare."""
    return np.frombuffer(hashlib.sha256(config_json.encode()).digest(), np.uint32).copy()


def mismatched_processes(digests_PW: np.ndarray) -> list[int]:
    """The processes whose digest row differs from process 0's."""
    return [p for p in range(1, digests_PW.shape[0]) if not np.array_equal(digests_PW[p], digests_PW[0])]


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gathered(values: np.ndarray) -> np.ndarray:
    """[process, ...] every process's `values` (same shape and dtype everywhere): one collective."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(values)).reshape(jax.process_count(), *values.shape)


SAME_FIXES = {
    "config": "start every process with the same --config and --config.* overrides",
    "workdir": "give every process the same --workdir",
    "data": "every process must read the same prepared data (one data.path, prepared once, seen alike by all hosts)",
    "list of checkpoints": "every host must see the same checkpoints/ (one shared filesystem, or a gs:// workdir)",
}


def check_same(values: dict[str, str]) -> None:
    """Every process must hold the same `values` (a name of SAME_FIXES -> its text): one collective comparing their
    digests, and one error on every process naming the first that differs."""
    if jax.process_count() == 1:
        return
    digests_PKW = gathered(np.stack([config_digest(text) for text in values.values()]))
    for k, name in enumerate(values):
        differing = mismatched_processes(digests_PKW[:, k])
        if differing:
            raise GptjaxError(f"the {name} differs between processes: process(es) {', '.join(map(str, differing))} "
                              f"resolved another {name} than process 0; {SAME_FIXES[name]}")


def check_same_config(config_json: str) -> None:
    """Every process must train the same config."""
    check_same({"config": config_json})


def agreed_unreadable(restored_step: int, unreadable: list[int], directory: str) -> list[int]:
    """The checkpoint steps every process found unreadable, once all processes restored the same step (-1: none);
    processes that restored different steps see the same files differently, which is one error on every process."""
    if jax.process_count() == 1:
        return sorted(unreadable)
    steps_P = gathered(np.asarray([restored_step], np.int64))[:, 0]
    if len(set(steps_P.tolist())) > 1:
        views = ", ".join(f"process {p}: {'none' if s < 0 else f'step {s}'}" for p, s in enumerate(steps_P.tolist()))
        raise GptjaxError(f"the processes restored different checkpoints of {directory} ({views}): the hosts do not "
                          f"see the same files alike; nothing was moved: make every host see the same checkpoints "
                          f"(or move the disputed step aside by hand), then run the same command again")
    newest = sorted(unreadable, reverse=True)[:MAX_STEPS_COMPARED]  # the same width on every process
    marks = np.full(MAX_STEPS_COMPARED, -1, np.int64)
    marks[:len(newest)] = newest
    marks_PS = gathered(marks)
    return sorted(set.intersection(*(set(row[row >= 0].tolist()) for row in marks_PS)))
