"""Training straight from gs:// (gptjax.data.remote) against the local GCS emulator: only the small files of a dataset
are copied, its token shards are read by byte ranges through a bounded block cache with read-ahead; the batches
equal the local ones (windows, packed rows, a mixture), a dataset several times larger than the cache trains with
the cache under its limit and resumes exactly, each of 2 processes reads only the byte ranges of its own rows, and
a shard rewritten during training or storage that refuses a read is one error line."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import GCS_BUCKET, REPO, FailAfterStep, free_port, tiny_config

pytest.importorskip("gcsfs")
pytest.importorskip("gcp_storage_emulator")

STEPS = 12
BLOCK = 4096  # small blocks, so that the tiny dataset spans many of them
CACHE_GB = 0.5 / 1024  # 0.5 MiB: the Shakespeare shards (2.2 MB) are over 4 times that


def cut_into_documents(data_dir: Path, seed: int) -> None:
    """Turns the one document of each shard of the bundled Shakespeare into thousands (every 5-60 tokens one
    becomes the `<|endoftext|>` between two documents, the document index follows), so packed rows come from
    documents spread over the whole shard."""
    from gptjax.data import store

    manifest = store.read_manifest(data_dir)
    fingerprint, eot = manifest["tokenizer"]["fingerprint"], manifest["tokenizer"]["eot_id"]
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for path in store.split_shards(data_dir, split):
            tokens = np.array(store.read_tokens(path))
            cuts = np.cumsum(rng.integers(5, 60, len(tokens) // 5))
            cuts = cuts[cuts < len(tokens) - 1]
            tokens[cuts] = eot
            store.write_tokens(path, tokens, fingerprint)
            store.write_doc_index(store.index_path(path), np.concatenate([[0], cuts + 1]), fingerprint)


@pytest.fixture(scope="module")
def gs_datasets(gcs, shakespeare_dir, tmp_path_factory) -> dict[str, tuple[str, Path]]:
    """Two datasets of the bundled Shakespeare cut into documents (a mixture needs two directories), each as
    (gs:// URL, local directory)."""
    local_root = tmp_path_factory.mktemp("streamed")
    datasets = {}
    for seed, name in enumerate(("web", "books")):
        local = Path(shutil.copytree(shakespeare_dir, local_root / name))
        cut_into_documents(local, seed)
        url = f"gs://{GCS_BUCKET}/streamed/{name}"
        gcs.put(str(local), url, recursive=True)
        datasets[name] = (url, local)
    return datasets


@pytest.fixture
def small_blocks(monkeypatch):
    from gptjax.data import remote

    monkeypatch.setattr(remote, "BLOCK_BYTES", BLOCK)


@pytest.fixture(autouse=True)
def fresh_caches():
    """Each test starts with empty block caches, and leaves no read-ahead running."""
    from gptjax.data import remote

    remote.close_caches()
    yield
    remote.close_caches()


def data_config(cache_dir: Path, **fields):
    from gptjax.config import DataConfig

    return DataConfig(cache_dir=str(cache_dir), **{"remote_cache_gb": CACHE_GB, **fields})


def step_batches(data_dir, data, steps: int = STEPS) -> list:
    from gptjax.data import loader

    iterator = loader.train_iterator(data_dir, 16, 8, seed=3, n_steps=steps, data=data)
    return [next(iterator) for _ in range(steps)]


def assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            for key in x:
                np.testing.assert_array_equal(x[key], y[key])
        else:
            np.testing.assert_array_equal(x, y)


def shard_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.bin"))


@pytest.mark.parametrize("packing", [False, True], ids=["windows", "packed"])
@pytest.mark.parametrize("mixture", [False, True], ids=["one_dataset", "mixture"])
def test_batches_read_from_gs_equal_the_local_ones(gs_datasets, cache_dir, small_blocks, packing, mixture):
    from gptjax.data import loader, remote
    from gptjax.data.sources import local_data_dir

    (web_url, web_local), (books_url, books_local) = gs_datasets["web"], gs_datasets["books"]
    remote_data, local_data = data_config(cache_dir, packing=packing), data_config(cache_dir, packing=packing)
    if mixture:
        remote_data = dataclasses.replace(remote_data, mixture=(f"{web_url}:0.7", f"{books_url}:0.3"))
        local_data = dataclasses.replace(local_data, mixture=(f"{web_local}:0.7", f"{books_local}:0.3"))
    view = local_data_dir(web_url, remote_data)
    assert view.parent == cache_dir / "remote" and not shard_files(view), "token shards stay on storage"
    assert (view / "manifest.json").is_file() and (view / "tokenizer").is_dir()
    remote.READ_LOG = []
    try:
        assert_same_batches(step_batches(view, remote_data), step_batches(web_local, local_data))
        reads = len(remote.READ_LOG)
    finally:
        remote.READ_LOG = None
    assert reads > STEPS, "rows from blocks all over the shards"
    assert_same_batches(loader.eval_batches(view, 16, 8, 3, data=remote_data),
                        loader.eval_batches(web_local, 16, 8, 3, data=local_data))


def test_a_whole_split_reads_the_same_from_gs(gs_datasets, cache_dir):
    from gptjax.data import store
    from gptjax.data.remote import read_split
    from gptjax.data.sources import local_data_dir

    url, local = gs_datasets["web"]
    expected = np.concatenate([store.read_tokens(p) for p in store.split_shards(local, "val")])
    np.testing.assert_array_equal(read_split(local_data_dir(url), "val"), expected)


def gs_train_config(cache_dir: Path, data_path: str, **train):
    cfg = tiny_config(cache_dir, train={"steps": STEPS, "checkpoint_every": 5, "eval_every": 6, **train})
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=data_path, remote_cache_gb=CACHE_GB))


def losses(workdir: Path) -> dict[int, float]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


@pytest.fixture(scope="module")
def local_run(gs_datasets, cache_dir, tmp_path_factory) -> Path:
    from gptjax.train.loop import train

    workdir = tmp_path_factory.mktemp("local_run") / "run"
    train(gs_train_config(cache_dir, str(gs_datasets["web"][1])), workdir, show_progress=False)
    return workdir


def test_a_dataset_several_times_the_cache_trains_like_local_data_with_the_cache_under_its_limit(
        gs_datasets, cache_dir, local_run, small_blocks, tmp_path):
    from gptjax.data import remote
    from gptjax.data.remote import cache_bytes, shared_cache
    from gptjax.train.loop import train

    url, local = gs_datasets["web"]
    cfg = gs_train_config(cache_dir, url)
    cache = shared_cache(cache_bytes(cfg.data), BLOCK)
    assert sum(p.stat().st_size for p in shard_files(local)) > 4 * cache.capacity
    remote.READ_LOG = []
    try:
        train(cfg, tmp_path / "run", show_progress=False)
        read = list(remote.READ_LOG)
    finally:
        remote.READ_LOG = None
    assert losses(tmp_path / "run") == losses(local_run), "the same batches, so bit-identical losses"
    assert 0 < cache.stats.peak_bytes <= cache.capacity and cache.held_bytes <= cache.capacity
    assert all(stop - start <= BLOCK for _, start, stop in read), "block by block, never whole objects"
    assert not shard_files(cache_dir / "remote"), "no shard was copied"
    assert cache.stats.hits + cache.stats.in_flight > 0, "read-ahead and reuse answer some requests"


def test_a_gs_data_run_resumes_exactly(gs_datasets, cache_dir, local_run, small_blocks, tmp_path, capfd):
    from gptjax.train.loop import train

    cfg = gs_train_config(cache_dir, gs_datasets["web"][0])
    with pytest.raises(RuntimeError, match="crash after step 8"):
        train(cfg, tmp_path / "run", show_progress=False, hooks=[FailAfterStep(8)])
    capfd.readouterr()
    train(cfg, tmp_path / "run", show_progress=False)
    assert "resuming from step 5" in capfd.readouterr().err
    assert losses(tmp_path / "run") == losses(local_run)


@dataclasses.dataclass
class RewriteAfterStep:
    """A hook that rewrites a gs:// object (same bytes, so a new generation) after step `step`."""

    fs: object
    path: str
    step: int

    def due(self, run, done: int) -> bool:
        return done == self.step

    def __call__(self, run, done: int, state) -> None:
        self.fs.pipe_file(self.path, self.fs.cat_file(self.path))


def test_a_shard_rewritten_during_training_stops_it_with_one_error_naming_it(gcs, gs_datasets, cache_dir,
                                                                            small_blocks, tmp_path):
    from gptjax.errors import GptjaxError
    from gptjax.train.loop import train

    url = f"gs://{GCS_BUCKET}/streamed/rewritten"
    gcs.put(str(gs_datasets["web"][1]), url, recursive=True)
    shard = sorted(p for p in gcs.find(url) if p.endswith(".bin") and "train" in p)[0]
    cfg = gs_train_config(cache_dir, url, steps=40, checkpoint_every=2, eval_every=1000)
    with pytest.raises(GptjaxError) as raised:
        train(cfg, tmp_path / "run", show_progress=False, hooks=[RewriteAfterStep(gcs, shard, 3)])
    message = str(raised.value)
    assert "\n" not in message and f"gs://{shard} changed while this run reads it" in message
    assert 3 <= max(losses(tmp_path / "run")) < 40, "stopped by the change, after it"
    checkpoints = tmp_path / "run" / "checkpoints"
    assert all((checkpoints / step / "_CHECKPOINT_METADATA").is_file()
               for step in (p.name for p in checkpoints.iterdir() if p.name.isdigit())), "only whole checkpoints"
    assert not list((tmp_path / "run").rglob("*.tmp-*"))


def test_a_shard_changed_after_the_run_opened_its_data_is_exit_2(gcs, gs_datasets, cache_dir, monkeypatch, capsys):
    from gptjax import fileio
    from gptjax.cli import main

    url = f"gs://{GCS_BUCKET}/streamed/changed"
    gcs.put(str(gs_datasets["web"][1]), url, recursive=True)
    opened = fileio.cached_copy

    def copy_then_rewrite(*args, **kwargs):
        view = opened(*args, **kwargs)
        for path in gcs.find(url):
            if path.endswith(".bin"):
                gcs.pipe_file(path, gcs.cat_file(path))
        return view

    monkeypatch.setattr(fileio, "cached_copy", copy_then_rewrite)
    args = ["train", "--config", "experiments/shakespeare_char_cpu.py", "--workdir", str(cache_dir / "changed-run"),
            "--config.train.steps=2", f"--config.data.path={url}"]
    assert main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gptjax: error:")]
    assert len(errors) == 1 and "changed while this run reads it" in errors[0] and url in errors[0]


@pytest.mark.parametrize("refusal", ["forbidden", "unreachable"])
def test_storage_refusing_a_read_is_one_error_line(gs_datasets, cache_dir, monkeypatch, refusal):
    import aiohttp
    from gcsfs.retry import HttpError

    from gptjax.data import remote
    from gptjax.data.sources import local_data_dir
    from gptjax.errors import GptjaxError

    view = local_data_dir(gs_datasets["web"][0])
    error = (HttpError({"code": 403, "message": "caller does not have storage.objects.get access"})
             if refusal == "forbidden" else aiohttp.ClientConnectionError("Cannot connect to host"))

    async def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(type(remote.fileio._remote_fs(gs_datasets["web"][0])[0]), "_call", refuse)
    with pytest.raises(GptjaxError) as raised:
        remote.open_split(view, "train", data_config(cache_dir, remote_cache_gb=0.001))
    message = str(raised.value)
    assert "\n" not in message and "train" in message
    assert ("no access to gs://" in message and "gcloud auth application-default login" in message
            if refusal == "forbidden" else "cannot read gs://" in message and "check the network" in message)


def test_training_on_data_of_an_unreachable_storage_service_is_one_error_line_and_exit_2(gs_datasets, tmp_path):
    from test_gcs import GPTJAX_WITHOUT_BACKOFF

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = subprocess.run([sys.executable, "-c", GPTJAX_WITHOUT_BACKOFF, "train", "--config",
                           "experiments/shakespeare_char_cpu.py", "--workdir", str(tmp_path / "run"),
                           "--config.train.steps=2", f"--config.data.path={gs_datasets['web'][0]}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "STORAGE_EMULATOR_HOST": dead, "TENSORSTORE_GCS_HTTP_URL": dead})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gptjax: error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "cannot reach the storage emulator" in errors[0] and not (tmp_path / "run").exists()


PROCESS_SCRIPT = """
import json, sys
import jax
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from gptjax.config import DataConfig
from gptjax.data import loader, remote
from gptjax.data.sources import local_data_dir
remote.BLOCK_BYTES, remote.READ_LOG = {block}, []
data = DataConfig(remote_cache_gb={cache_gb}, remote_readahead_steps={ahead})
view = local_data_dir(sys.argv[3], data)
iterator = loader.train_iterator(view, 16, 8, 3, {steps}, jax.process_index(), jax.process_count(), data=data)
batches = [next(iterator).tolist() for _ in range({steps})]
print(json.dumps({{"batches": batches, "reads": remote.READ_LOG}}))
"""


def test_each_of_two_processes_reads_only_the_byte_ranges_of_its_own_rows(gs_datasets, cache_dir):
    from gptjax.data import store
    from gptjax.data.loader import WindowSampler

    url, local = gs_datasets["web"]
    steps, ahead = 6, 2
    script = PROCESS_SCRIPT.format(block=BLOCK, cache_gb=CACHE_GB, ahead=ahead, steps=steps)
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([sys.executable, "-c", script, coordinator, str(i), url], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err[-2000:] for _, err in outputs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]

    paths = store.split_shards(local, "train")
    sampler = WindowSampler(paths, 17, 3)
    itemsize = store.read_header(paths[0]).itemsize
    names = [f"{url}/{p.name}" for p in paths]

    def blocks_of_rows(process: int, upto: int) -> set[tuple[str, int]]:
        rows = np.concatenate([np.arange(s * 8 + process * 4, s * 8 + process * 4 + 4) for s in range(upto)])
        spans = [(names[shard], store.HEADER_BYTES + a * itemsize, store.HEADER_BYTES + b * itemsize)
                 for shard, a, b in sampler.spans(rows)]
        return {(name, block) for name, start, stop in spans
                for block in range(start // BLOCK, (stop - 1) // BLOCK + 1)}

    headers = {(name, 0) for name in names}
    for process, result in enumerate(results):
        own = blocks_of_rows(process, steps + ahead)
        np.testing.assert_array_equal(np.array(result["batches"]),
                                      np.stack([sampler.windows(np.arange(s * 8 + process * 4, s * 8 + process * 4 + 4))
                                                for s in range(steps)]))
        read = {(name, start // BLOCK) for name, start, _ in result["reads"]}
        assert len(read) == len(result["reads"]), "no block read twice"
        assert read <= own | headers, "only blocks of this process's rows (and the shard headers)"
        assert blocks_of_rows(process, steps) <= read
        others = blocks_of_rows(1 - process, steps + ahead) - own - headers
        assert others and not read & others
