"""tpu_scripts/ against a fake gcloud (tests/fixtures/fake_gcloud) first on PATH: the exact gcloud invocations,
the preemption watch and relaunch, dry runs that run nothing, one-line errors, and no secret in any output."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "tpu_scripts"
FAKE = REPO / "tests" / "fixtures" / "fake_gcloud"
T = ["--name", "gpt2-v4-32", "--zone", "us-central2-b"]
Z = "--zone=us-central2-b"
VM = ["gcloud", "compute", "tpus", "tpu-vm"]
QR = ["gcloud", "compute", "tpus", "queued-resources"]
LAUNCH = ["--config", "experiments/gpt2_124m.py", "--workdir", "gs://bkt/runs/gpt2_124m",
          "--config.data.path=data/corpus-gpt2"]
TRAIN = (".venv/bin/gptjax train --config experiments/gpt2_124m.py --workdir gs://bkt/runs/gpt2_124m "
         "--config.data.path=data/corpus-gpt2")
SECRETS = {"HF_TOKEN": "hf_s3cr3tTOKENvalue", "WANDB_API_KEY": "wandb-k3y-0123456789",
           "GOOGLE_APPLICATION_CREDENTIALS": "/home/me/keys/sa-key-7f3e.json"}


class Fake:
    """Runs a script with the fake gcloud first on PATH; `calls` are the gcloud argument lists it received."""

    def __init__(self, tmp_path: Path):
        self.dir = tmp_path
        self.log = tmp_path / "gcloud.log"
        self.files = tmp_path / "scp"
        self.files.mkdir()

    def run(self, script: str, *args: str, replies=None, env=None) -> subprocess.CompletedProcess:
        for old in self.dir.glob("gcloud.log*"):
            old.unlink()
        replies_file = self.dir / "replies.json"
        replies_file.write_text(json.dumps(replies or []))
        full_env = {**os.environ, "PATH": f"{FAKE}{os.pathsep}{os.environ['PATH']}", "FAKE_GCLOUD_LOG": str(self.log),
                    "FAKE_GCLOUD_REPLIES": str(replies_file), "FAKE_GCLOUD_FILES": str(self.files), **(env or {})}
        return subprocess.run([sys.executable, str(SCRIPTS / f"{script}.py"), *args], capture_output=True, text=True,
                              env=full_env, timeout=60)

    @property
    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [["gcloud", *json.loads(line)] for line in self.log.read_text().splitlines()]


@pytest.fixture
def fake(tmp_path) -> Fake:
    return Fake(tmp_path)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr
    return result


def ssh_commands(calls, worker="all") -> list[str]:
    return [c[c.index("--command") + 1] for c in calls if c[4] == "ssh" and f"--worker={worker}" in c]


# ---- create / delete ---------------------------------------------------------------------------------------------

def test_create_spot_tpu_vm(fake):
    ok(fake.run("create", *T, "--accelerator-type", "v4-32", "--spot"))
    assert fake.calls == [VM + ["create", "gpt2-v4-32", Z, "--accelerator-type=v4-32",
                                "--version=tpu-ubuntu2204-base", "--spot"]]


def test_create_preemptible_with_project_and_runtime_version(fake):
    ok(fake.run("create", *T, "--project", "my-proj", "--accelerator-type", "v5litepod-16", "--preemptible",
                "--runtime-version", "v2-alpha-tpuv5-lite", "--service-account", "sa@my-proj.iam.gserviceaccount.com"))
    assert fake.calls == [VM + ["create", "gpt2-v4-32", Z, "--project=my-proj", "--accelerator-type=v5litepod-16",
                                "--version=v2-alpha-tpuv5-lite", "--preemptible",
                                "--service-account=sa@my-proj.iam.gserviceaccount.com"]]


def test_create_queued_resource_waits_until_active(fake):
    states = ["WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"]
    result = ok(fake.run("create", *T, "--accelerator-type", "v4-32", "--spot", "--queued",
                         "--valid-until-duration", "6h", "--interval", "0", replies=[["describe", states]]))
    describe = QR + ["describe", "gpt2-v4-32", Z, "--format=value(state.state)"]
    assert fake.calls == [QR + ["create", "gpt2-v4-32", Z, "--node-id=gpt2-v4-32", "--accelerator-type=v4-32",
                                "--runtime-version=tpu-ubuntu2204-base", "--spot", "--valid-until-duration=6h"],
                          describe, describe, describe]
    assert "gpt2-v4-32: ACTIVE" in result.stderr


def test_delete_quiet(fake):
    ok(fake.run("delete", *T))
    assert fake.calls == [VM + ["delete", "gpt2-v4-32", Z, "--quiet"]]
    ok(fake.run("delete", *T, "--queued", "--project", "p1"))
    assert fake.calls == [QR + ["delete", "gpt2-v4-32", Z, "--project=p1", "--force", "--quiet"]]


# ---- setup / sync / launch / tail --------------------------------------------------------------------------------

def test_setup_installs_on_all_workers(fake):
    ok(fake.run("setup_env", *T))
    [call] = fake.calls
    assert call[:8] == VM + ["ssh", "gpt2-v4-32", Z, "--worker=all"]
    command = call[call.index("--command") + 1]
    assert "python3 -m venv .venv" in command and ".venv/bin/pip install -q -e '.[tpu]'" in command


def test_sync_copies_the_checkout_to_all_workers(fake):
    ok(fake.run("sync", *T))
    scp, unpack = fake.calls
    assert scp[:5] == VM + ["scp"] and scp[5].endswith("gptjax-sync.tar.gz")
    assert scp[6:] == ["gpt2-v4-32:gptjax-sync.tar.gz", Z, "--worker=all"]
    assert unpack == VM + ["ssh", "gpt2-v4-32", Z, "--worker=all", "--command",
                           "mkdir -p gptjax && tar -xzf gptjax-sync.tar.gz -C gptjax && rm -f gptjax-sync.tar.gz"]
    names = tarfile.open(fake.files / "gptjax-sync.tar.gz").getnames()
    assert "setup.py" in names and "tpu_scripts/tpuvm.py" in names and "experiments/gpt2_124m.py" in names
    assert not any(n.startswith((".venv/", ".git/")) or "__pycache__" in n for n in names)


def test_sync_git_and_data(fake, tmp_path):
    data = tmp_path / "corpus-gpt2"
    data.mkdir()
    (data / "manifest.json").write_text("{}")
    ok(fake.run("sync", *T, "--git", "https://github.com/me/gptjax.git", "--ref", "v1", "--data", str(data)))
    git, scp, unpack = fake.calls
    assert ssh_commands([git]) == [
        "set -e; [ -d gptjax/.git ] || git clone -q https://github.com/me/gptjax.git gptjax; "
        "git -C gptjax fetch -q https://github.com/me/gptjax.git v1; git -C gptjax checkout -q --detach FETCH_HEAD; "
        "echo \"$(hostname): $(git -C gptjax log -1 --format=%h)\""]
    assert scp[-2:] == [Z, "--worker=all"] and "-C gptjax/data" in ssh_commands([unpack])[0]
    assert tarfile.open(fake.files / "gptjax-sync.tar.gz").getnames() == ["corpus-gpt2/manifest.json"]
    ok(fake.run("sync", *T, "--git", "https://github.com/me/gptjax.git", "--data", "gs://bkt/data/corpus-gpt2/"))
    assert ssh_commands(fake.calls)[1] == ("mkdir -p gptjax/data && "
                                           "gcloud storage cp -r gs://bkt/data/corpus-gpt2 gptjax/data/")


def test_launch_on_all_workers_under_nohup(fake):
    ok(fake.run("launch", *T, *LAUNCH))
    [call] = fake.calls
    assert call[:8] == VM + ["ssh", "gpt2-v4-32", Z, "--worker=all"]
    assert call[9] == (
        "cd gptjax || exit 1; if p=$(cat ~/gptjax-train.pid 2>/dev/null) && ps -o args= -p \"$p\" | "
        "grep -q 'gptjax train'; then rm -f ~/.gptjax-env; echo \"$(hostname): gptjax train is already running "
        "(pid $p)\" >&2; exit 3; fi; rm -f ~/gptjax-train.exit; nohup bash -c '[ ! -f ~/.gptjax-env ] || "
        f"{{ set -a; . ~/.gptjax-env; set +a; rm -f ~/.gptjax-env; }}; {TRAIN}; echo $? > ~/gptjax-train.exit' > "
        "~/gptjax-train.log 2>&1 < /dev/null & echo $! > ~/gptjax-train.pid; "
        "echo \"$(hostname): started, log ~/gptjax-train.log\"")


def test_tail_all_workers_without_following(fake):
    ok(fake.run("tail", *T, "--worker", "all", "--lines", "20", "--no-follow"))
    assert fake.calls == [VM + ["ssh", "gpt2-v4-32", Z, "--worker=all", "--command", "tail -n 20 ~/gptjax-train.log"]]


def test_tail_follows_worker_0(fake):
    ok(fake.run("tail", *T))
    assert fake.calls == [VM + ["ssh", "gpt2-v4-32", Z, "--worker=0", "--command", "tail -n 100 -F ~/gptjax-train.log"]]


# ---- the remote commands themselves, run here in bash with a stand-in home ----------------------------------

def on_worker(command: str, home: Path) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, cwd=home, timeout=60)


FAKE_TRAINER = """#!/bin/bash
echo "args: $*"; echo "token: ${HF_TOKEN:-unset}"
for i in $(seq 300); do [ -f "$HOME/release" ] && exit 7; sleep 0.05; done
exit 9
"""


def wait_for(path: Path) -> str:
    for _ in range(400):
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def test_launch_command_starts_refuses_a_second_and_records_the_exit_code(fake, tmp_path):
    home = tmp_path / "home"
    trainer = home / "gptjax" / ".venv" / "bin" / "gptjax"
    trainer.parent.mkdir(parents=True)
    trainer.write_text(FAKE_TRAINER)
    trainer.chmod(0o755)
    ok(fake.run("launch", *T, *LAUNCH, "--env", "HF_TOKEN", env=SECRETS))
    (fake.files / ".gptjax-env").rename(home / ".gptjax-env")
    command = ssh_commands(fake.calls)[0]
    started = on_worker(command, home)
    assert started.returncode == 0 and "started, log ~/gptjax-train.log" in started.stdout, started.stderr
    second = on_worker(command, home)
    assert second.returncode == 3 and "gptjax train is already running" in second.stderr
    (home / "release").touch()
    assert wait_for(home / "gptjax-train.exit") == "7"
    log = (home / "gptjax-train.log").read_text()
    assert f"args: {TRAIN.split(' ', 1)[1]}" in log and f"token: {SECRETS['HF_TOKEN']}" in log
    assert not (home / ".gptjax-env").exists()
    (home / "release").unlink()
    again = on_worker(command, home)  # the old job is gone: a relaunch starts
    assert again.returncode == 0 and not (home / "gptjax-train.exit").exists()
    (home / "release").touch()
    assert wait_for(home / "gptjax-train.exit") == "7"
    assert "token: unset" in (home / "gptjax-train.log").read_text()  # the forwarded file was used up


def test_sync_commands_clone_then_pull_and_unpack(fake, tmp_path):
    origin, home = tmp_path / "origin", tmp_path / "home"
    home.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(origin)]
    subprocess.run(["git", "init", "-q", "-b", "main", str(origin)], check=True)
    (origin / "hello.txt").write_text("one\n")
    subprocess.run([*git, "add", "hello.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    data = tmp_path / "corpus"
    data.mkdir()
    (data / "manifest.json").write_text("{}")
    ok(fake.run("sync", *T, "--git", str(origin), "--data", str(data)))
    clone, unpack = ssh_commands(fake.calls)
    assert on_worker(clone, home).returncode == 0 and (home / "gptjax" / "hello.txt").read_text() == "one\n"
    (origin / "hello.txt").write_text("two\n")
    subprocess.run([*git, "commit", "-qam", "two"], check=True)
    assert on_worker(clone, home).returncode == 0 and (home / "gptjax" / "hello.txt").read_text() == "two\n"
    (fake.files / "gptjax-sync.tar.gz").rename(home / "gptjax-sync.tar.gz")
    assert on_worker(unpack, home).returncode == 0
    assert (home / "gptjax" / "data" / "corpus" / "manifest.json").exists()
    assert not (home / "gptjax-sync.tar.gz").exists()


def test_setup_command_is_valid_bash(fake):
    ok(fake.run("setup_env", *T, "--extras", "tpu,hf"))
    [command] = ssh_commands(fake.calls)
    assert "'.[tpu,hf]'" in command
    assert subprocess.run(["bash", "-n", "-c", command]).returncode == 0


# ---- watch ---------------------------------------------------------------------------------------------------

WATCH = [*T, *LAUNCH, "--git", "https://github.com/me/gptjax.git", "--interval", "0"]
EXIT_CHECK = "gptjax-train.exit 2>/dev/null"


def verbs(calls) -> list[str]:
    """Each call as its verb, ssh calls as what they do."""
    named = []
    for c in calls:
        command = c[c.index("--command") + 1] if "--command" in c else ""
        what = {"git clone": "sync", "pip install": "setup", "nohup": "launch", EXIT_CHECK: "exit?"}
        named.append(next((v for k, v in what.items() if k in command), c[4]))
    return named


def test_watch_relaunches_after_preemption_then_ends_when_training_finishes(fake):
    result = ok(fake.run("watch", *WATCH, replies=[["describe", ["READY", "PREEMPTED", "READY"]],
                                                   [EXIT_CHECK, ["", "0"]]]))
    assert verbs(fake.calls) == ["describe", "exit?", "describe", "describe", "sync", "setup", "launch",
                                 "describe", "exit?"]
    assert TRAIN in ssh_commands(fake.calls)[-1] and ssh_commands(fake.calls)[-1].startswith("cd gptjax")
    assert "PREEMPTED; relaunch 1" in result.stderr and "training finished (exit 0) after 1 relaunch" in result.stderr
    assert "--recreate" in result.stderr  # the hint: a preempted Spot VM stays PREEMPTED


def test_watch_recreates_a_preempted_spot_vm(fake):
    ok(fake.run("watch", *WATCH, "--recreate", "--accelerator-type", "v4-32", "--spot",
                replies=[["describe", ["READY", "PREEMPTED", "CREATING", "READY"]], [EXIT_CHECK, ["", "0"]]]))
    calls = fake.calls
    assert verbs(calls) == ["describe", "exit?", "describe", "delete", "create", "describe", "describe", "sync",
                            "setup", "launch", "describe", "exit?"]
    assert calls[3] == VM + ["delete", "gpt2-v4-32", Z, "--quiet"]
    assert calls[4] == VM + ["create", "gpt2-v4-32", Z, "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base",
                             "--spot"]


def test_watch_queued_resource_suspended(fake):
    ok(fake.run("watch", *WATCH, "--queued", "--recreate", "--accelerator-type", "v4-32", "--spot",
                replies=[["describe", ["ACTIVE", "SUSPENDED", "ACTIVE"]], [EXIT_CHECK, ["", "0"]]]))
    calls = fake.calls
    assert calls[0] == QR + ["describe", "gpt2-v4-32", Z, "--format=value(state.state)"]
    assert calls[3] == QR + ["delete", "gpt2-v4-32", Z, "--force", "--quiet"]
    assert calls[4][:6] == QR + ["create", "gpt2-v4-32"] and "--node-id=gpt2-v4-32" in calls[4]
    assert verbs(calls)[5:] == ["describe", "sync", "setup", "launch", "describe", "exit?"]


def test_watch_relaunches_a_signalled_trainer_and_stops_on_a_failed_one(fake):
    result = fake.run("watch", *WATCH, replies=[["describe", ["READY"]], [EXIT_CHECK, ["143", "2"]]])
    assert result.returncode == 2
    assert verbs(fake.calls) == ["describe", "exit?", "describe", "sync", "setup", "launch", "describe", "exit?"]
    assert result.stderr.strip().splitlines()[-1] == (
        "watch.py: error: gptjax train exited with code 2 on worker 0 (not a preemption); read the logs with "
        "tail.py --worker all, fix, then launch.py again")


def test_watch_gives_up_after_max_relaunches(fake):
    result = fake.run("watch", *WATCH, "--max-relaunches", "1", replies=[["describe", ["PREEMPTED", "READY",
                                                                                       "PREEMPTED"]]])
    assert result.returncode == 2 and verbs(fake.calls).count("launch") == 1
    assert "after 1 relaunches (--max-relaunches); giving up" in result.stderr


# ---- dry runs ------------------------------------------------------------------------------------------------

DRY = {
    "create": [*T, "--accelerator-type", "v4-32", "--spot", "--queued"],
    "setup_env": T,
    "sync": T,
    "launch": [*T, *LAUNCH, "--env", "HF_TOKEN"],
    "tail": T,
    "watch": [*T, *LAUNCH, "--recreate", "--accelerator-type", "v4-32", "--spot", "--env", "HF_TOKEN"],
    "delete": T,
}


@pytest.mark.parametrize("script", sorted(DRY))
def test_dry_run_prints_commands_and_runs_nothing(fake, script):
    result = ok(fake.run(script, *DRY[script], "--dry-run", env=SECRETS))
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith(("gcloud compute tpus ", "# ")) for line in lines), result.stdout
    assert fake.calls == [] and not any(fake.files.iterdir())
    assert result.stderr == ""


def test_dry_run_watch_shows_the_whole_relaunch(fake):
    result = ok(fake.run("watch", *DRY["watch"], "--dry-run", env=SECRETS))
    out = result.stdout
    for piece in ["tpu-vm describe", "tpu-vm delete gpt2-v4-32 --zone=us-central2-b --quiet", "tpu-vm create",
                  "tpu-vm scp", "pip install", "nohup", TRAIN]:
        assert piece in out


# ---- bad input: one line, non-zero ---------------------------------------------------------------------------

BAD = [
    ("create", ["--zone", "us-central2-b", "--accelerator-type", "v4-32"],
     "the following arguments are required: --name"),
    ("launch", ["--name", "x", *LAUNCH], "the following arguments are required: --zone"),
    ("create", [*T, "--accelerator-type", "v4_32"], "--accelerator-type 'v4_32' is not a Cloud TPU type like v4-32"),
    ("create", [*T, "--accelerator-type", "tpu-v4-32"], "is not a Cloud TPU type"),
    ("create", [*T, "--accelerator-type", "v5e-16"], "v5e is called v5litepod-16 in gcloud"),
    ("create", [*T, "--accelerator-type", "v4-32", "--spot", "--preemptible"], "not allowed with argument"),
    ("create", [*T, "--accelerator-type", "v4-32", "--queued", "--preemptible"], "use --spot with --queued"),
    ("create", [*T, "--accelerator-type", "v4-32", "--valid-until-duration", "6h"], "needs --queued"),
    ("delete", ["--name", "GPT2_big", "--zone", "us-central2-b"], "--name 'GPT2_big' must be lowercase"),
    ("delete", ["--name", "x", "--zone", "central"], "--zone 'central' is not a zone"),
    ("launch", [*T, "--config", "experiments/gpt2_124m.py", "--workdir", "runs/x"], "must be a gs://BUCKET/PATH"),
    ("launch", [*T, *LAUNCH, "--bogus"], "unrecognized argument '--bogus'"),
    ("launch", [*T, *LAUNCH, "--env", "GPTJAX_TEST_UNSET_VAR"], "GPTJAX_TEST_UNSET_VAR is not set in this environment"),
    ("tail", [*T, "--worker", "first"], "--worker 'first' must be a worker number"),
    ("setup_env", [*T, "--extras", "tpu; rm -rf /"], "--extras 'tpu; rm -rf /' must be comma-separated"),
    ("watch", [*T, *LAUNCH, "--recreate"], "--recreate needs the create flags"),
    ("watch", [*T, *LAUNCH, "--recreate", "--accelerator-type", "v9-8"], "is not a Cloud TPU type"),
]


@pytest.mark.parametrize("script,args,message", BAD, ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(BAD)])
def test_bad_input_is_one_line(fake, script, args, message):
    result = fake.run(script, *args)
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{script}.py: error: ") and message in line, line
    assert fake.calls == []


def test_a_failing_gcloud_is_one_line_with_its_exit_code(fake):
    result = fake.run("delete", *T, replies=[["delete", [{"stdout": "ERROR: (gcloud) NOT_FOUND", "rc": 1}]]])
    assert result.returncode == 1
    assert result.stdout == "ERROR: (gcloud) NOT_FOUND\n"
    assert result.stderr.splitlines()[-1] == ("delete.py: error: gcloud compute tpus tpu-vm delete ... failed "
                                              "(exit 1); see its output above")


# ---- secrets ---------------------------------------------------------------------------------------------------

def test_no_secret_ever_appears_in_output_or_command_lines(fake):
    leak = " ".join(SECRETS.values())  # what a careless remote command might echo back
    outputs = []
    for script, args in [("launch", [*T, *LAUNCH, "--env", "HF_TOKEN", "--env", "WANDB_API_KEY"]),
                         ("launch", [*T, *LAUNCH, "--env", "HF_TOKEN", "--dry-run"]),
                         ("tail", [*T]),
                         ("sync", [*T, "--git", "https://me:ghp_URLpassw0rd@github.com/me/gptjax.git",
                                   "--dry-run"]),
                         ("watch", [*WATCH, "--env", "HF_TOKEN"])]:
        result = fake.run(script, *args, env=SECRETS, replies=[["describe", ["READY"]], [EXIT_CHECK, ["0"]],
                                                               ["ssh", [f"remote says {leak}"]]])
        assert result.returncode == 0, result.stderr
        outputs += [result.stdout, result.stderr]
        if "--dry-run" not in args and script != "sync":
            assert not any(v in " ".join(c) for c in fake.calls for v in SECRETS.values())
    text = "\n".join(outputs)
    assert "remote says **** **** ****" in text and "https://****@github.com/me/gptjax.git" in text
    for value in [*SECRETS.values(), "ghp_URLpassw0rd"]:
        assert value not in text


def test_forwarded_variables_travel_in_a_private_file(fake):
    ok(fake.run("launch", *T, *LAUNCH, "--env", "HF_TOKEN", env=SECRETS))
    scp, launch = fake.calls
    assert scp[4:5] == ["scp"] and scp[6:] == ["gpt2-v4-32:.gptjax-env", Z, "--worker=all"]
    env_file = fake.files / ".gptjax-env"
    assert env_file.read_text() == f"HF_TOKEN={SECRETS['HF_TOKEN']}\n"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert not Path(scp[5]).exists()  # the local temp copy is gone
    assert ". ~/.gptjax-env" in launch[-1] and "rm -f ~/.gptjax-env" in launch[-1]
