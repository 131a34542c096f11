"""Durable file writes: every output appears under its name only when complete, and survives a power cut.

The one place for atomic writes (temp file beside the target, fsync, rename, fsync of the directory), staged
directories, and JSON reads that turn a corrupt file into one clear error.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import IO, Any, Iterator

from gptjax.errors import GptjaxError, note


def fsync_dir(path: str | Path) -> None:
    """Makes a rename or a new entry in `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: str | Path) -> Path:
    """The hidden sibling an atomic write of `path` goes through."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """A file object whose content replaces `path` only when the block completes (fsynced); removed otherwise."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json_atomic(path: str | Path, data: Any, sort_keys: bool = True) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def read_json(path: str | Path, what: str, fix: str) -> Any:
    """The parsed JSON at `path`; a missing, unreadable or corrupt file is one GptjaxError naming `what` and `fix`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GptjaxError(f"{what} not found: {path}; {fix}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GptjaxError(f"{what} {path} cannot be read ({e}); {fix}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise GptjaxError(f"{what} {path} is corrupt (invalid JSON at line {e.lineno}, column {e.colno}); {fix}") from None


def require_empty_destination(destination: Path, purpose: str) -> None:
    """Raises unless `destination` is absent or an empty directory (checked before any work is done)."""
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise GptjaxError(f"{destination} already exists and is not empty; choose a new {purpose} (nothing was changed)")


@contextlib.contextmanager
def staged_directory(destination: str | Path, purpose: str) -> Iterator[Path]:
    """A fresh directory beside `destination` that is renamed onto it when the block succeeds, removed otherwise.

    `destination` may be absent or an empty directory; anything else is an error and is left untouched."""
    destination = Path(destination)
    require_empty_destination(destination, purpose)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.parent / f".{destination.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        for root, _, files in os.walk(staging):
            for name in files:
                with open(Path(root, name), "rb") as f:
                    os.fsync(f.fileno())
            fsync_dir(root)
        if destination.exists():
            destination.rmdir()
        os.rename(staging, destination)
        fsync_dir(destination.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _lock_file(path: Path, wait: bool):
    """An open handle on `path` holding its flock, or None when another live process holds it (`wait=False`).

    The file is removed on release, so a waiter that then holds a lock on the removed file retries on a new one."""
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle, False
        try:
            current = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return handle, True
        handle.close()


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str, wait: bool = False) -> Iterator[None]:
    """Holds an exclusive lock on `path` (flock: released by the kernel when the holder dies, even by SIGKILL).

    With `wait=False` a lock held by a live process is one GptjaxError naming it (pid, host, since when); a lock
    file left by a process that died is taken over with a note. The file is removed on a clean release."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, held = _lock_file(path, wait)
    if not held:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise GptjaxError(f"{what} is in use by {holder}; wait for it to finish or stop it "
                          f"(a lock left by a killed process is taken over automatically)")
    handle.seek(0)
    previous = handle.read().strip()
    if previous:
        note(f"taking over the lock of {what} left by {previous}, which is no longer running")
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
    handle.flush()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file's bytes, read in blocks."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
