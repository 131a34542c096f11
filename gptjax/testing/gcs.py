"""A local GCS emulator (tests/gcs_emulator.py) as a subprocess, and the environment that points gcsfs, tensorstore
and the Google auth libraries at it: what the gs:// tests and benchmarks/input_gcs.py both start."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

EMULATOR_SCRIPT = Path(__file__).resolve().parents[2] / "tests" / "gcs_emulator.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def emulator_env(url: str) -> dict:
    """Everything pointed at the emulator, and every credential lookup kept on this machine (no metadata server)."""
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
            "FSSPEC_GS_TOKEN": "anon", "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:9",
            "GCE_METADATA_IP": "127.0.0.1:9", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def start_emulator(bucket: str, log: IO | int = subprocess.DEVNULL,
                   timeout_s: float = 30) -> tuple[subprocess.Popen, str]:
    """The emulator, in memory, holding `bucket`, on a free localhost port; returns (process, its URL) once it
    accepts connections. Raises RuntimeError (after killing it) when it does not come up."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(EMULATOR_SCRIPT), "start", "--host", "127.0.0.1", "--port",
                             str(port), "--in-memory", "--default-bucket", bucket, "-q"], stdout=log, stderr=log)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("the GCS emulator did not start") from None
            time.sleep(0.1)
