"""Durable file writes: every output appears under its name only when complete, and survives a power cut.

The one place for atomic writes (temp file beside the target, fsync, rename, fsync of the directory), staged
directories, JSON reads that turn a corrupt file into one clear error, and the workdir lock.

Workdirs may also be `gs://` URLs (object storage, through fsspec/gcsfs; paths are `etils.epath.Path`, which orbax
uses too): an object write is one upload, which GCS makes atomic, so no temp file or rename is involved; the lock
is an object created with a generation precondition; appended files (metrics) are rewritten whole, throttled; a
prepared dataset's small files are copied once into a local cache while its token shards stay remote
(`gptjax.data.remote` reads byte ranges of them). Local paths keep exactly the local behaviour.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from gptjax.errors import GptjaxError, note

REMOTE_SCHEMES = ("gs://",)  # what a workdir or data path may name besides a local path
LOCK_HEARTBEAT_S = 30.0  # how often the holder of an object lock refreshes it
LOCK_STALE_S = 120.0  # an object lock not refreshed for this long belongs to a process that is gone
APPEND_UPLOAD_S = 30.0  # an appended object is uploaded at most this often (and on sync / close)


# ---- where a path lives --------------------------------------------------------------------------------------


def is_remote(path: Any) -> bool:
    """True for a URL (gs://..., memory://...), False for a local path."""
    return "://" in str(path)


def as_path(path: Any):
    """`path` as a path object: pathlib.Path when local, etils.epath.Path for a gs:// URL."""
    if not is_remote(path):
        return Path(path)
    text = str(path)
    if not text.startswith(REMOTE_SCHEMES):
        raise GptjaxError(f"{text}: only local paths and {', '.join(REMOTE_SCHEMES)} URLs are supported here")
    _remote_fs(text)  # gcsfs present, before epath needs it
    from etils import epath

    return epath.Path(text)


def absolute(path: Any):
    """`as_path(path)`, made absolute when local."""
    return as_path(path) if is_remote(path) else Path(path).absolute()


def _remote_fs(url: str):
    """(fsspec filesystem, its path) of a URL; a missing filesystem package is one clear error.

    gs:// object listings are never cached, in every gcsfs instance created after the first call (orbax's epath
    paths hold their own): a cached listing goes stale as soon as another instance, tensorstore or another host
    writes, and a stale one hides a checkpoint that exists."""
    import fsspec

    fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as error:
        raise GptjaxError(f"{url}: reading gs:// needs gcsfs ({error}); pip install -e '.[gcs]'") from None


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160] if text else ''}"


def _is_auth_error(error: BaseException) -> bool:
    code = getattr(error, "code", None) or getattr(error, "status", None)
    return (isinstance(error, PermissionError) or code in (401, 403)
            or type(error).__module__.startswith("google.auth"))


def check_remote_root(url: str, what: str) -> None:
    """Raises one GptjaxError (what, where, what to do) unless the bucket of `url` exists and answers.

    Called before a run, a load or an eval touches `url`, so an unreachable service, missing credentials or a
    nonexistent bucket are reported as such instead of as a failure deep inside a checkpoint library."""
    fs, path = _remote_fs(url)
    bucket = path.split("/", 1)[0]
    scheme = url.split("://", 1)[0]
    try:
        exists = fs.exists(bucket)
    except Exception as error:  # gcsfs raises aiohttp, google.auth and its own HttpError types
        if _is_auth_error(error):
            raise GptjaxError(f"{what} {url}: no access to bucket {scheme}://{bucket} ({_short(error)}); the Google "
                              f"Cloud credentials are missing or lack storage permission: run `gcloud auth "
                              f"application-default login` or set GOOGLE_APPLICATION_CREDENTIALS (on a TPU VM, give "
                              f"its service account storage access)") from None
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        where = f"the storage emulator at STORAGE_EMULATOR_HOST={emulator}" if emulator else "Google Cloud Storage"
        raise GptjaxError(f"{what} {url}: cannot reach {where} ({_short(error)}); check the network and run the "
                          f"same command again") from None
    if not exists:
        raise GptjaxError(f"{what} {url}: bucket {scheme}://{bucket} does not exist (or these credentials cannot see "
                          f"it); create it (`gcloud storage buckets create {scheme}://{bucket}`) or fix the path")


def makedirs(path: Any) -> None:
    """Creates a local directory and its parents; object storage has no directories, so nothing to do there."""
    if not is_remote(path):
        Path(path).mkdir(parents=True, exist_ok=True)


def move_tree(source: Any, destination: Any) -> None:
    """Moves a file or directory tree (on object storage: a copy of every object, then their removal)."""
    if not is_remote(source):
        shutil.move(str(source), str(destination))
        return
    fs, path = _remote_fs(str(source))
    # not fs.mv: gcsfs tries the moveTo API per object first, and where it is refused (the test emulator answers
    # 501) it retries with back-off before copying; copy + remove is what it then does anyway
    fs.copy(path, _remote_fs(str(destination))[1], recursive=True)
    fs.rm(path, recursive=True)
    fs.invalidate_cache()


def remove_orphaned_temp_files(directory: Any) -> None:
    """Removes the temp files atomic writes left in `directory` when their process died (none on object
    storage, where a write is one upload)."""
    if is_remote(directory):
        return
    for path in Path(directory).glob(".*.tmp-*"):
        if path.is_file():
            path.unlink(missing_ok=True)


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
    """A file object whose content replaces `path` only when the block completes (fsynced); removed otherwise.

    On object storage the content is buffered and written as one upload when the block completes."""
    if is_remote(path):
        with _remote_atomic_open(str(path), mode, encoding) as f:
            yield f
        return
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


@contextlib.contextmanager
def _remote_atomic_open(url: str, mode: str, encoding: str | None) -> Iterator[IO]:
    buffer = io.StringIO() if "b" not in mode else io.BytesIO()
    yield buffer
    data = buffer.getvalue()
    fs, path = _remote_fs(url)
    fs.pipe_file(path, data.encode(encoding or "utf-8") if isinstance(data, str) else data)


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
    path = as_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GptjaxError(f"{what} not found: {path}; {fix}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GptjaxError(f"{what} {path} cannot be read ({e}); {fix}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise GptjaxError(
            f"{what} {path} is corrupt (invalid JSON at line {e.lineno}, column {e.colno}); {fix}"
        ) from None


def check_destination(path: str | Path | None, flag: str, directory: bool = False) -> None:
    """Makes the folder an output `path` (a file, or with `directory` a folder) will be written into and checks it
    takes files, before any work is done (a local path; object storage is checked by its first write)."""
    if path is None or is_remote(path):
        return
    folder = Path(path).absolute().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GptjaxError(f"{flag} {path}: cannot create its folder {folder} ({error.strerror}); choose another path "
                          f"(nothing was done)") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise GptjaxError(f"{flag} {path}: the folder {folder} is not writable; choose another path (nothing was "
                          f"done)")
    if not directory and Path(path).is_dir():
        raise GptjaxError(f"{flag} {path} is a directory; give a file path (nothing was done)")


def require_empty_destination(destination: Path, purpose: str) -> None:
    """Raises unless `destination` is absent or an empty directory (checked before any work is done)."""
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise GptjaxError(
            f"{destination} already exists and is not empty; choose a new {purpose} (nothing was changed)"
        )


@contextlib.contextmanager
def staged_directory(destination: str | Path, purpose: str) -> Iterator[Path]:
    """A fresh directory beside `destination` that is renamed onto it when the block succeeds, removed otherwise.

    `destination` may be absent or an empty directory; anything else is an error and is left untouched."""
    destination = Path(destination)
    require_empty_destination(destination, purpose)
    destination.parent.mkdir(parents=True, exist_ok=True)
    for orphan in destination.parent.glob(f".{destination.name}.staging-*"):
        pid = orphan.name.rsplit(".staging-", 1)[-1].split("-")[0]
        if pid == str(os.getpid()) or not _pid_alive(pid):  # an abandoned attempt of this process, or a dead one's
            shutil.rmtree(orphan, ignore_errors=True)
    # A fresh name for each attempt: writers a failed attempt left running (orbax's) never touch the next one.
    staging = destination.parent / f".{destination.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
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
        _remove_settled(staging)
        raise


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _remove_settled(directory: Path, tries: int = 10, wait_s: float = 0.1) -> None:
    """Removes `directory`, again while writers that were still finishing (a failed orbax save's other threads)
    recreate files in it."""
    for _ in range(tries):
        shutil.rmtree(directory, ignore_errors=True)
        time.sleep(wait_s)
        if not directory.exists():
            return


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
    file left by a process that died is taken over with a note. The file is removed on a clean release.
    On object storage it is a lock object instead (`_object_lock`; `wait` is not supported there)."""
    if is_remote(path):
        with _object_lock(str(path), what):
            yield
        return
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
    handle.write(_holder_text())
    handle.flush()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _holder_text() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"


def _holder_is_dead(holder: str) -> bool:
    """True when `holder` names a process of this host that no longer runs (its lock can be taken at once)."""
    match = re.match(r"pid (\d+) on (\S+) since", holder)
    if not match or match.group(2) != socket.gethostname():
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _object_age_s(info: dict) -> float:
    """Seconds since an object was last written, from its listing (gcsfs: mtime/updated, memory: created)."""
    stamp = info.get("mtime") or info.get("updated") or info.get("created")
    if hasattr(stamp, "timestamp"):
        stamp = stamp.timestamp()
    elif isinstance(stamp, str):
        from datetime import datetime

        stamp = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return time.time() - float(stamp or 0.0)


class _Heartbeat(threading.Thread):
    """Rewrites the lock object every LOCK_HEARTBEAT_S while it is held, so others can tell a live holder from a
    lock left by a process (or a VM) that is gone."""

    def __init__(self, fs, path: str, text: str):
        super().__init__(daemon=True, name="gptjax-lock-heartbeat")
        self.fs, self.path, self.text = fs, path, text
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(LOCK_HEARTBEAT_S):
            try:
                if self.fs.cat_file(self.path).decode() == self.text:  # never refresh a lock another took over
                    self.fs.pipe_file(self.path, self.text.encode())
            except Exception:  # a failed beat is retried at the next one; a long outage makes the lock stale
                continue


@contextlib.contextmanager
def _object_lock(url: str, what: str) -> Iterator[None]:
    """An exclusive lock on object storage: the object `url`, created only if absent (GCS: ifGenerationMatch=0, so
    of two processes racing for it one gets an error) and refreshed by a heartbeat. A lock object whose heartbeat
    stopped LOCK_STALE_S ago, or whose holder is a dead process of this host, is taken over with a note."""
    fs, path = _remote_fs(url)
    fs.invalidate_cache(path)
    if fs.exists(path):
        holder = fs.cat_file(path).decode(errors="replace").strip() or "another process"
        age = _object_age_s(fs.info(path))
        if age < LOCK_STALE_S and not _holder_is_dead(holder):
            raise GptjaxError(f"{what} is in use by {holder} (lock object {url}, refreshed {age:.0f} s ago); wait for "
                              f"it to finish or stop it (a lock not refreshed for {LOCK_STALE_S:.0f} s is taken over "
                              f"automatically)")
        note(f"taking over the lock of {what} left by {holder}, which is no longer running")
        fs.rm_file(path)
    text = _holder_text()
    try:
        fs.pipe_file(path, text.encode(), mode="create")
    except FileExistsError:
        raise GptjaxError(f"{what} was locked by another process at the same moment ({url}); wait for it to finish "
                          f"or stop it") from None
    heartbeat = _Heartbeat(fs, path, text)
    heartbeat.start()
    try:
        yield
    finally:
        heartbeat.stopped.set()
        heartbeat.join()
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass


class ObjectAppender:
    """A text or binary file on object storage opened for appending, which objects cannot do: what was there plus
    everything written is uploaded whole (one atomic write) at most every `interval_s` on `flush`, and always on
    `sync` and `close`. A process killed between uploads loses at most that interval's lines."""

    def __init__(self, url: str, binary: bool = False, interval_s: float = APPEND_UPLOAD_S):
        self.url, self.binary, self.interval_s = url, binary, interval_s
        self.fs, self.path = _remote_fs(url)
        self.parts: list[bytes] = [self.fs.cat_file(self.path)] if self.fs.exists(self.path) else []
        self.dirty = False
        self.uploaded_at = time.monotonic()

    def write(self, data) -> int:
        self.parts.append(data if self.binary else data.encode("utf-8"))
        self.dirty = True
        return len(data)

    def flush(self) -> None:
        if self.dirty and time.monotonic() - self.uploaded_at >= self.interval_s:
            self.sync()

    def sync(self) -> None:
        if self.dirty:
            self.parts = [b"".join(self.parts)]
            self.fs.pipe_file(self.path, self.parts[0])
            self.dirty = False
            self.uploaded_at = time.monotonic()

    def close(self) -> None:
        self.sync()


def open_append(path: Any):
    """A text file to append lines to: the local file opened "a", or an ObjectAppender on object storage."""
    return ObjectAppender(str(path)) if is_remote(path) else open(path, "a")


def _listing_version(info: dict) -> str:
    """What changes whenever an object is rewritten: its GCS generation, else its etag or write time."""
    return str(info.get("generation") or info.get("etag") or info.get("mtime") or info.get("created") or "")


REMOTE_SOURCE = ".gptjax-remote.json"  # in a partial cache copy: the URL and (size, generation) of what stayed remote


def cached_copy(url: str, cache_dir: Path, leave_remote: Callable[[str], bool] | None = None) -> Path:
    """A local copy of every object under `url`, downloaded once into `cache_dir` and reused while no object
    changed (the copy's name is keyed by the URL and every object's name, size and generation).

    With `leave_remote`, the objects whose relative names it accepts are not downloaded: the copy's REMOTE_SOURCE
    file records the URL and each such object's size and generation, for readers that fetch byte ranges of them."""
    fs, root = _remote_fs(url)
    root = root.rstrip("/")
    listing = fs.find(root, detail=True)
    if not listing:
        raise GptjaxError(f"{url} holds no files; point it at a directory `gptjax prepare` wrote (copied with "
                          f"`gcloud storage cp -r`)")
    entries = sorted((name[len(root) + 1:], info.get("size"), _listing_version(info)) for name, info in listing.items())
    remote = [entry for entry in entries if leave_remote is not None and leave_remote(entry[0])]
    key = hashlib.sha256(json.dumps([url, entries] + ([len(remote)] if leave_remote else [])).encode()).hexdigest()[:16]
    local = Path(cache_dir) / f"{root.rsplit('/', 1)[-1]}-{key}"
    if local.is_dir():
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(local.with_name(local.name + ".lock"), f"the cache copy {local}", wait=True):
        if not local.is_dir():  # another process may have finished it while this one waited
            copied = [entry for entry in entries if entry not in remote]
            note(f"copying {url} ({len(copied)} files{f', {len(remote)} left remote' if remote else ''}) to the "
                 f"local cache {local}")
            with staged_directory(local, "cache copy") as staging:
                for name, _, _ in copied:
                    target = staging / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    fs.get_file(f"{root}/{name}", str(target))
                if leave_remote is not None:
                    objects = {name: {"size": size, "generation": version} for name, size, version in remote}
                    write_json_atomic(staging / REMOTE_SOURCE, {"url": url.rstrip("/"), "objects": objects})
    return local


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file's bytes, read in blocks."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
