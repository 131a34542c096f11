"""Multi-process training on one machine: 2 real JAX processes x 4 CPU devices (gloo collectives) train like 1 process
x 8 devices, a SIGKILLed process stops its peer and the run resumes bit-exactly (on a local and on a gs:// workdir),
mismatched configs and an unreachable coordinator are one clear error."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import GCS_BUCKET, REPO, free_port, gcs_losses, run_cli, same_params, tiny_overrides
from test_resume import losses_by_step

from gptjax.errors import GptjaxError
from gptjax.parallel import distributed

CONFIG = "experiments/shakespeare_char_cpu.py"
STEPS = 12
# A 2x2x2 mesh: every kind of collective (data, fsdp, tensor) crosses the process boundary.
ARGS = tiny_overrides(steps=STEPS, **{"train.batch_size": 8, "train.checkpoint_every": 4, "train.eval_every": 6,
                                      "model.dropout": 0.1, "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
HEARTBEAT_S = 10


def train_command(workdir: Path, extra: list[str], fault: list[str] | None = None) -> list[str]:
    args = ["--config", CONFIG, "--workdir", str(workdir), *ARGS, *extra]
    if fault:
        return [sys.executable, "tests/faults.py", *fault, "--", *args]
    return [sys.executable, "-m", "gptjax", "train", *args]


def run_processes(workdir: Path, per_process: dict[int, list[str]] | None = None,
                  faults: dict[int, list[str]] | None = None, timeout: int = 240) -> list[subprocess.CompletedProcess]:
    """Runs a 2-process `gptjax train` (4 CPU devices each) to the end; `per_process` adds arguments to one process,
    `faults` runs one through tests/faults.py with those fault flags."""
    coordinator = f"127.0.0.1:{free_port()}"
    procs = []
    for i in range(2):
        extra = ["--config.train.cpu_devices=4", "--coordinator", coordinator, "--num-processes", "2",
                 "--process-id", str(i), "--heartbeat-timeout", str(HEARTBEAT_S), *(per_process or {}).get(i, [])]
        procs.append(subprocess.Popen(train_command(workdir, extra, (faults or {}).get(i)), cwd=REPO, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = []
    for i, proc in enumerate(procs):
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError(f"process {i} hung past {timeout} s")
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def assert_ok(results: list[subprocess.CompletedProcess]) -> None:
    for i, r in enumerate(results):
        assert r.returncode == 0, f"process {i}: {r.stderr[-2000:]}"


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, shakespeare_dir) -> Path:
    workdir = tmp_path_factory.mktemp("two_process") / "run"
    results = run_processes(workdir)
    assert_ok(results)
    assert '"step": 12' in results[0].stdout and '"step"' not in results[1].stdout, "only process 0 prints the summary"
    return workdir


def test_two_processes_of_4_devices_train_like_one_process_of_8(two_process_run, tmp_path):
    one = tmp_path / "one"
    proc = run_cli(["train", "--config", CONFIG, "--workdir", str(one), *ARGS, "--config.train.cpu_devices=8"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    single, multi = losses_by_step(one), losses_by_step(two_process_run)
    assert sorted(multi) == list(range(1, STEPS + 1))
    assert sorted(single) == sorted(multi)
    for step in single:
        assert abs(single[step] - multi[step]) <= 1e-5, (step, single[step], multi[step])
    lines = (two_process_run / "metrics.jsonl").read_text().splitlines()
    assert len([line for line in lines if '"loss"' in line]) == STEPS, "metrics are written by process 0 alone"
    assert sorted(p.name for p in (two_process_run / "checkpoints").iterdir() if p.name.isdigit()) == ["12", "4", "8"]


def test_two_processes_on_a_gs_workdir_resume_after_a_kill_like_an_uninterrupted_local_run(two_process_run, gcs):
    import gptjax

    workdir = f"gs://{GCS_BUCKET}/runs/two_process"
    killed = run_processes(workdir, faults={1: ["--kill-after-step", "10"]})
    assert killed[1].returncode == -signal.SIGKILL and killed[0].returncode != 0, killed[0].stderr[-2000:]
    resumed = run_processes(workdir)
    assert_ok(resumed)
    assert "resuming from step 8" in resumed[0].stderr
    assert gcs_losses(gcs, workdir) == losses_by_step(two_process_run)
    gcs.invalidate_cache()
    written = {p.split("/checkpoints/12/params/", 1)[1].split("/")[0]
               for p in gcs.find(f"{workdir}/checkpoints/12/params")}
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= written, "each process wrote its shards of the checkpoint"
    remote, local = gptjax.load(workdir), gptjax.load(two_process_run)
    assert remote.step == STEPS
    same_params(remote, local)


def test_sigkilled_process_stops_its_peer_and_the_run_resumes_exactly(two_process_run, tmp_path):
    workdir = tmp_path / "run"
    started = time.monotonic()
    killed = run_processes(workdir, faults={1: ["--kill-after-step", "10"]})
    assert killed[1].returncode == -signal.SIGKILL, killed[1].stderr[-2000:]
    assert killed[0].returncode != 0, "the surviving process must not carry on alone"
    assert "another task died" in killed[0].stderr, killed[0].stderr[-2000:]
    assert time.monotonic() - started < 200
    assert max(losses_by_step(workdir)) < STEPS
    resumed = run_processes(workdir)
    assert_ok(resumed)
    assert "resuming from step 8" in resumed[0].stderr
    assert losses_by_step(workdir) == losses_by_step(two_process_run)


def test_processes_with_different_configs_stop_with_one_clear_error(tmp_path, shakespeare_dir):
    results = run_processes(tmp_path / "run", per_process={1: ["--config.train.lr=0.002"]})
    for r in results:
        assert r.returncode == 2, r.stderr[-2000:]
        errors = [line for line in r.stderr.splitlines() if line.startswith("gptjax: error:")]
        assert len(errors) == 1 and "config differs between processes: process(es) 1" in errors[0], r.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unreachable_coordinator_is_one_line_naming_the_timeout(tmp_path):
    started = time.monotonic()
    proc = run_cli(["train", "--config", CONFIG, "--workdir", str(tmp_path / "run"), "--coordinator",
                    f"127.0.0.1:{free_port()}", "--num-processes", "2", "--process-id", "1", "--init-timeout", "2"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert "could not reach the coordinator 127.0.0.1:" in proc.stderr and "within 2 s" in proc.stderr
    assert time.monotonic() - started < 60


def test_cluster_comes_from_flags_then_environment():
    env = {distributed.ENV_COORDINATOR: "10.0.0.1:8476", distributed.ENV_NUM_PROCESSES: "4",
           distributed.ENV_PROCESS_ID: "3"}
    assert distributed.cluster_from(None, None, None, env) == distributed.Cluster("10.0.0.1:8476", 4, 3)
    assert distributed.cluster_from("h:1", None, 0, env) == distributed.Cluster("h:1", 4, 0)
    assert distributed.cluster_from(None, None, None, {}) is None
    assert distributed.cluster_from(None, 1, None, {}) is None
    assert distributed.Cluster("[::1]:9000", 2, 0).host_port == ("::1", 9000)


@pytest.mark.parametrize("flags, env, message", [
    (("h:1", 2, None), {}, "missing --process-id"),
    (("h:1", 2, 2), {}, "--process-id 2 must be in [0, 2)"),
    (("nohost", 2, 0), {}, "must be HOST:PORT"),
    ((None, None, None), {distributed.ENV_NUM_PROCESSES: "two"}, "GPTJAX_NUM_PROCESSES must be an integer"),
])
def test_incomplete_or_invalid_cluster_is_an_error(flags, env, message):
    with pytest.raises(GptjaxError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        distributed.cluster_from(*flags, env)


def test_digests_name_the_processes_that_differ():
    same, other = distributed.config_digest('{"a": 1}'), distributed.config_digest('{"a": 2}')
    assert distributed.mismatched_processes(np.stack([same, same, other, same])) == [2]
    assert distributed.mismatched_processes(np.stack([same, same])) == []


def test_a_signal_to_one_process_stops_both_with_one_collective_checkpoint(tmp_path, shakespeare_dir):
    workdir = tmp_path / "run"
    coordinator = f"127.0.0.1:{free_port()}"
    args = ["--config", CONFIG, "--workdir", str(workdir), *ARGS, "--config.train.steps=100000",
            "--config.train.log_every=2"]
    procs = [subprocess.Popen([sys.executable, "-m", "gptjax", "train", *args, "--config.train.cpu_devices=4",
                               "--coordinator", coordinator, "--num-processes", "2", "--process-id", str(i),
                               "--heartbeat-timeout", str(HEARTBEAT_S)],
                              cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=120) for p in procs]
    for i, (proc, (_, err)) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 130, f"process {i}: {err[-2000:]}"
        assert "stopped by a signal to process 1" in err and "run the same command to resume" in err
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] % 2 == 0


def test_processes_restore_the_same_step_or_stop_with_one_error_and_nothing_moved(two_process_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(two_process_run, workdir)
    more = {p: ["--config.train.steps=16"] for p in (0, 1)}
    # Process 1's view of step 12 is damaged: it would fall back to step 8 while process 0 restores 12.
    split = run_processes(workdir, per_process=more, faults={1: ["--unreadable-step", "12"]})
    for r in split:
        errors = [line for line in r.stderr.splitlines() if line.startswith("gptjax: error:")]
        assert r.returncode == 2 and len(errors) == 1, r.stderr[-2000:]
        assert "restored different checkpoints" in errors[0] and "process 0: step 12, process 1: step 8" in errors[0]
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [4, 8, 12]
    assert not (workdir / "checkpoints_unreadable").exists(), "nothing is set aside without every process agreeing"
    # Unreadable for both: set aside once, and the run resumes from step 8 exactly as it first ran.
    both = run_processes(workdir, faults={0: ["--unreadable-step", "12"], 1: ["--unreadable-step", "12"]})
    assert_ok(both)
    assert "resuming from step 8" in both[0].stderr
    assert [p.name.split("-")[0] for p in (workdir / "checkpoints_unreadable").iterdir()] == ["12"]
    assert losses_by_step(workdir) == losses_by_step(two_process_run)


def test_processes_with_different_workdirs_stop_with_one_clear_error(tmp_path, shakespeare_dir):
    results = run_processes(tmp_path / "run", per_process={1: ["--workdir", str(tmp_path / "other")]})
    for r in results:
        errors = [line for line in r.stderr.splitlines() if line.startswith("gptjax: error:")]
        assert r.returncode == 2 and len(errors) == 1, r.stderr[-2000:]
        assert "the workdir differs between processes: process(es) 1" in errors[0]
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "other").exists()
