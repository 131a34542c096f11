"""Where the pipeline's per-chunk tasks run: the `Executor` interface and its process-pool implementation.

Phases hand an executor a module-level function and an iterable of argument tuples, and read results back in
submission order; the tasks are pure over their arguments plus the chunk files they write. Any runner with this
shape (a local pool, a Beam or Ray job) can run the same tasks.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol, TypeVar

from gptjax.errors import GptjaxError

Result = TypeVar("Result")


class WorkerDied(GptjaxError):
    """A worker process of the pipeline died (killed, out of memory); finished chunks are kept for a rerun."""


class Executor(Protocol):
    def map(self, fn: Callable[..., Result], arguments: Iterable[tuple]) -> Iterator[Result]:
        """`fn(*args)` for every tuple of `arguments`, yielded in submission order."""
        ...

    def shutdown(self) -> None:
        """Releases the workers (the executor may be used again after)."""
        ...


class LocalExecutor:
    """Runs tasks in this process (workers <= 1) or on a pool of `workers` spawned processes.

    `map` keeps at most two tasks per worker in flight, so the arguments of only a few chunks are held at once.
    """

    def __init__(self, workers: int):
        self.workers = max(int(workers), 1)
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: Callable[..., Result], arguments: Iterable[tuple]) -> Iterator[Result]:
        if self.workers == 1:
            for args in arguments:
                yield fn(*args)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_die_with_parent, initargs=(os.getpid(),))
        pending: deque = deque()
        try:
            for args in arguments:
                pending.append(self._pool.submit(fn, *args))
                while len(pending) >= 2 * self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            self.shutdown()
            raise WorkerDied("a worker process of `gptjax prepare` died (killed or out of memory); the finished "
                             "chunks are kept: run the same command again to resume") from None

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _die_with_parent(parent_pid: int) -> None:
    """Asks Linux to SIGKILL this worker when the prepare process dies, so no orphan keeps writing chunks (and
    exits at once if the parent died while this worker was starting)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(1)
