"""Hugging Face Hub ids (`ORG/NAME[@REVISION]`) resolved to local snapshots through huggingface_hub and its cache.

Downloads go to huggingface_hub's cache (`HF_HUB_CACHE`, default ~/.cache/huggingface/hub) and are reused from it;
`HF_HUB_OFFLINE=1` uses the cache alone. A revision is a branch, tag or commit; the commit a branch resolved to is
what gptjax records. Every failure (unknown id or revision, a gated repo without a token, offline with nothing
cached, the Hub unreachable) is one GptjaxError naming the id and what to do.
"""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from gptjax.errors import GptjaxError

# what a model import reads: config, safetensors weights, tokenizer files (never pickled weights)
MODEL_PATTERNS = ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                  "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                  "vocab.json", "merges.txt", "added_tokens.json")
PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DATASET_SCHEME = "hf://datasets/"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?$")


@dataclass(frozen=True)
class Snapshot:
    """A downloaded (or cached) repo revision: the Hub id asked for, the commit it resolved to, the local folder."""

    repo_id: str
    revision: str | None
    commit: str
    path: Path

    @property
    def pinned_id(self) -> str:
        return f"{self.repo_id}@{self.commit}"


def is_hub_id(src: str) -> bool:
    """True for `ORG/NAME[@REVISION]` that is not an existing local path."""
    return bool(_HUB_ID.match(src)) and not Path(src).exists()


def split_hub_id(hub_id: str) -> tuple[str, str | None]:
    repo_id, _, revision = hub_id.partition("@")
    return repo_id, revision or None


def _offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE") or bool(constants.HF_HUB_OFFLINE)


def _cache_dir() -> str:
    """HF_HUB_CACHE (or HF_HOME/hub) as set now, else huggingface_hub's default."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return str(constants.HF_HUB_CACHE)


def _refuse_pickled_only(repo_id: str, revision: str | None, what: str) -> None:
    """Online: refuses a model repo whose weights are only pickles, before anything is downloaded."""
    from huggingface_hub import HfApi

    files = HfApi().list_repo_files(repo_id, revision=revision)
    pickled = [name for name in files if name.endswith(PICKLED_WEIGHTS)]
    if pickled and not any(name.endswith(".safetensors") for name in files):
        raise GptjaxError(f"{what} {repo_id}: the repo holds only pickled weights ({pickled[0]}, ...) and gptjax "
                          f"does not unpickle; pick a revision with model.safetensors or convert it")


@contextlib.contextmanager
def _answers(what: str, repo_id: str, revision: str | None, repo_type: str) -> Iterator[None]:
    """Turns huggingface_hub's failures inside the block into one GptjaxError naming the id and what to do."""
    from huggingface_hub import errors

    at = f"@{revision}" if revision else ""
    try:
        yield
    except errors.GatedRepoError:
        raise GptjaxError(f"{what} {repo_id}{at}: the repo is gated; accept its terms on "
                          f"https://huggingface.co/{repo_id} and log in (`hf auth login`) or set HF_TOKEN") from None
    except errors.RepositoryNotFoundError:
        raise GptjaxError(f"{what} {repo_id}: no such {repo_type} repo on the Hub (or it is private and no token is "
                          f"set); check the id, or log in with `hf auth login`") from None
    except errors.RevisionNotFoundError:
        raise GptjaxError(f"{what} {repo_id}: no revision {revision!r} (a branch, tag or commit); check the "
                          f"@REVISION part") from None
    except errors.LocalEntryNotFoundError:
        if _offline():
            kind = "" if repo_type == "model" else f" --repo-type {repo_type}"
            raise GptjaxError(f"{what} {repo_id}{at}: HF_HUB_OFFLINE=1 and it is not in the Hub cache "
                              f"{_cache_dir()}; download it once online (`hf download {repo_id}{kind}`) or unset "
                              f"HF_HUB_OFFLINE") from None
        raise GptjaxError(f"{what} {repo_id}{at}: cannot reach the Hub and it is not cached in {_cache_dir()}; check "
                          f"the network (or HF_ENDPOINT) and run the same command again") from None
    except errors.HfHubHTTPError as error:
        raise GptjaxError(f"{what} {repo_id}{at}: the Hub answered {str(error).splitlines()[0]}; run the same "
                          f"command again later") from None


def _huggingface_hub(what: str, name: str):
    try:
        import huggingface_hub
    except ImportError as error:
        raise GptjaxError(f"{what} {name}: Hub ids need huggingface_hub ({error}); pip install huggingface_hub") \
            from None
    return huggingface_hub


def snapshot(hub_id: str, what: str, patterns: tuple[str, ...] = MODEL_PATTERNS,
             repo_type: str = "model") -> Snapshot:
    """The local folder of `hub_id` holding the files matching `patterns` (downloaded once, then from the cache)."""
    huggingface_hub = _huggingface_hub(what, hub_id)
    repo_id, revision = split_hub_id(hub_id)
    with _answers(what, repo_id, revision, repo_type):
        if repo_type == "model" and not _offline():
            _refuse_pickled_only(repo_id, revision, what)
        folder = Path(huggingface_hub.snapshot_download(
            repo_id, repo_type=repo_type, revision=revision, cache_dir=_cache_dir(), local_files_only=_offline(),
            allow_patterns=list(patterns)))
    return Snapshot(repo_id, revision, folder.name, folder)


@dataclass(frozen=True)
class HubFile:
    """One file of a Hub dataset at a commit, path-like: opening it (os.fspath) downloads it into the Hub cache then,
    so a reader going file by file never waits for the whole dataset. `size` comes from the listing."""

    repo_id: str
    commit: str
    path_in_repo: str
    size: int

    @property
    def name(self) -> str:
        return PurePosixPath(self.path_in_repo).name

    def __str__(self) -> str:
        return f"{DATASET_SCHEME}{self.repo_id}@{self.commit}/{self.path_in_repo}"

    def __fspath__(self) -> str:
        huggingface_hub = _huggingface_hub("--input", str(self))
        with _answers("--input", self.repo_id, self.commit, "dataset"):
            return huggingface_hub.hf_hub_download(self.repo_id, self.path_in_repo, repo_type="dataset",
                                                   revision=self.commit, cache_dir=_cache_dir(),
                                                   local_files_only=_offline())

    def read_bytes(self) -> bytes:
        return Path(os.fspath(self)).read_bytes()

    def stat(self) -> os.stat_result:
        """Size from the listing; no modification time (the commit names the content)."""
        return os.stat_result((0o100444, 0, 0, 1, 0, 0, self.size, 0, 0, 0))


def _cached_commit(repo_folder: Path, revision: str | None) -> str | None:
    """The commit a cached revision (branch, tag or commit) points at, if the cache knows it."""
    ref = repo_folder / "refs" / (revision or "main")
    if ref.is_file():
        return ref.read_text().strip()
    if revision and (repo_folder / "snapshots" / revision).is_dir():
        return revision
    return None


def dataset_files(url: str) -> list[HubFile]:
    """Every file of the Hub dataset `hf://datasets/ORG/NAME[@REVISION][/PATH]` below PATH, from the Hub's listing
    (offline: the cached snapshot's), pinned to the commit the revision resolves to now. Nothing is downloaded."""
    huggingface_hub = _huggingface_hub("--input", url)
    parts = url.removeprefix(DATASET_SCHEME).strip("/").split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise GptjaxError(f"--input {url}: a Hub dataset is hf://datasets/ORG/NAME[@REVISION][/PATH]")
    name, _, revision = parts[1].partition("@")
    repo_id, prefix, revision = f"{parts[0]}/{name}", "/".join(parts[2:]), revision or None
    with _answers("--input dataset", repo_id, revision, "dataset"):
        if _offline():
            repo_folder = Path(_cache_dir()) / f"datasets--{repo_id.replace('/', '--')}"
            commit = _cached_commit(repo_folder, revision)
            if commit is None:
                raise huggingface_hub.errors.LocalEntryNotFoundError(f"{repo_id} is not cached")
            root = repo_folder / "snapshots" / commit
            files = [HubFile(repo_id, commit, path.relative_to(root).as_posix(), path.stat().st_size)
                     for path in sorted((root / prefix).rglob("*") if (root / prefix).is_dir() else [root / prefix])
                     if path.is_file()]
        else:
            api = huggingface_hub.HfApi()
            commit = api.dataset_info(repo_id, revision=revision).sha
            entries = api.list_repo_tree(repo_id, path_in_repo=prefix or None, recursive=True, repo_type="dataset",
                                         revision=commit)
            files = [HubFile(repo_id, commit, entry.path, entry.size) for entry in entries
                     if isinstance(entry, huggingface_hub.hf_api.RepoFile)]
    return sorted(files, key=lambda file: file.path_in_repo)
