"""Where a run's prepared data lives: the cache root, the local view of a gs:// dataset, `data.mixture`'s entries."""
from __future__ import annotations

import os
from pathlib import Path

from gptjax import fileio
from gptjax.config import DataConfig, mixture_entry
from gptjax.data import store
from gptjax.errors import GptjaxError


def cache_root(data_cfg: DataConfig) -> Path:
    return Path(data_cfg.cache_dir or os.environ.get("GPTJAX_CACHE") or Path.home() / ".cache" / "gptjax")


def is_token_shard(name: str) -> bool:
    """True for a prepared directory's token shards (what stays remote in the view of a gs:// dataset)."""
    return name.endswith(".bin")


def local_data_dir(path: str | Path, data_cfg: DataConfig | None = None) -> Path:
    """A prepared data directory as a local path. For a gs:// one, its view: the small files (manifest, tokenizer,
    document indexes) copied once into the cache (`$GPTJAX_CACHE/remote/`, keyed by the URL and its objects'
    generations, so a changed dataset gets a new view), its token shards left on storage, where
    `gptjax.data.remote` reads the byte ranges a run needs, pinned to the generations the view recorded."""
    if not fileio.is_remote(path):
        return Path(path)
    fileio.check_remote_root(str(path), "data")
    if not (fileio.as_path(path) / store.MANIFEST).is_file():
        raise GptjaxError(f"{path} holds no prepared data (no {store.MANIFEST}); copy a `gptjax prepare` output there "
                          f"(`gcloud storage cp -r DATA_DIR {path}`) or fix data.path")
    return fileio.cached_copy(str(path), cache_root(data_cfg or DataConfig()) / "remote", leave_remote=is_token_shard)


def mixture_entries(data_cfg: DataConfig) -> list[tuple[Path, float]]:
    """(prepared dir, weight) of every `data.mixture` entry "DATA_DIR:WEIGHT", checked: dirs prepared, weights
    positive, one tokenizer for all."""
    entries = []
    for entry in data_cfg.mixture:
        path, weight = mixture_entry(entry)
        entries.append((local_data_dir(path, data_cfg), weight))
    fingerprints = {}
    for path, _ in entries:
        fingerprints[str(path)] = store.read_manifest(path)["tokenizer"]["fingerprint"]
    if len(set(fingerprints.values())) > 1:
        listing = ", ".join(f"{path} ({fp[:12]})" for path, fp in fingerprints.items())
        raise GptjaxError(f"data.mixture datasets were tokenized with different tokenizers: {listing}; prepare them "
                          f"with one tokenizer (`gptjax prepare --tokenizer-dir FIRST_DIR/tokenizer ...` reuses one)")
    return entries
