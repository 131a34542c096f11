"""`gptjax train --config experiments/X.py --workdir DIR [--config.a.b=v ...]`: train or resume a run.

Multi-process (several hosts, or several processes on one): every process runs the same command with
`--coordinator HOST:PORT --num-processes N --process-id I` (or GPTJAX_COORDINATOR, GPTJAX_NUM_PROCESSES,
GPTJAX_PROCESS_ID); on Cloud TPU VMs and under SLURM the cluster is found from the environment.
"""
from __future__ import annotations

import argparse
import json
import os

from gptjax.cli.common import load_config
from gptjax.parallel import distributed

HELP = "train or resume: --config experiments/X.py|RUN/config.json --workdir DIR [--config.a.b=v ...]"
TAKES_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="an experiment file (experiments/X.py) or a run's config.json")
    p.add_argument("--workdir", required=True)
    p.add_argument("--allow-data-change", action="store_true",
                   help="resume on prepared data other than the run's checkpoints were trained on (recorded)")
    p.add_argument("--coordinator",
                   help=f"HOST:PORT of process 0, for a multi-process run (${distributed.ENV_COORDINATOR})")
    p.add_argument("--num-processes", type=int, help=f"processes in the run (${distributed.ENV_NUM_PROCESSES})")
    p.add_argument("--process-id", type=int, help=f"this process's id in [0, N) (${distributed.ENV_PROCESS_ID})")
    p.add_argument("--init-timeout", type=int, default=distributed.INIT_TIMEOUT_S, metavar="S",
                   help="seconds to wait for the coordinator and all processes to join")
    p.add_argument("--heartbeat-timeout", type=int, default=distributed.HEARTBEAT_TIMEOUT_S, metavar="S",
                   help="seconds without a heartbeat after which a process counts as dead and the run stops")


def joined_config(args: argparse.Namespace, overrides: list[str]):
    """Joins the cluster the arguments or the environment name (before any JAX backend starts), then loads the
    config, checked to be the same on every process."""
    from gptjax import config as config_lib

    cluster = distributed.cluster_from(args.coordinator, args.num_processes, args.process_id, os.environ)
    processes = distributed.initialize(cluster, init_timeout_s=args.init_timeout,
                                       heartbeat_timeout_s=args.heartbeat_timeout)
    cfg = load_config(args.config, overrides, processes=processes)
    distributed.check_same_config(config_lib.to_json(cfg))
    return cfg


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    import jax

    from gptjax.train.loop import train

    summary = train(joined_config(args, overrides), args.workdir, allow_data_change=args.allow_data_change)
    if jax.process_index() == 0:
        print(json.dumps({k: summary[k] for k in ("step", "loss", "val_loss", "val_ppl", "val_bpb") if k in summary}))
    return 0
