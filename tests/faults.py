"""Fault injection for the resume tests, kept out of the product: `gptjax train` with extra loop hooks.

    python tests/faults.py [--kill-after-step 13 [--kill-during-save]] [--unreadable-step 12] -- --config X
        --workdir W [--config.a.b=v ...] [--coordinator HOST:PORT --num-processes N --process-id I]
        (the arguments of `gptjax train`)

`--kill-after-step N` SIGKILLs the process (no cleanup) once step N's checkpoints are on disk;
`--kill-during-save` SIGKILLs it right after the async save of step N has started, before it can finish;
`--unreadable-step N` makes checkpoint step N fail to restore in this process only (one host's damaged view).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout this file belongs to


@dataclasses.dataclass
class KillAfterStep:
    step: int
    during_save: bool = False

    def due(self, run, done: int) -> bool:
        return done == self.step

    def __call__(self, run, done: int, state) -> None:
        if not self.during_save:
            run.checkpoints.wait()
        os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-after-step", type=int)
    parser.add_argument("--kill-during-save", action="store_true")
    parser.add_argument("--unreadable-step", type=int)
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    if args.unreadable_step is not None:
        from gptjax.checkpoint import Checkpoints

        real_restore = Checkpoints._restore

        def damaged(self, step, *rest, **kwargs):
            if step == args.unreadable_step:
                raise ValueError(f"DATA_LOSS: checkpoint step {step} is damaged in this process's view (injected)")
            return real_restore(self, step, *rest, **kwargs)

        Checkpoints._restore = damaged
    from gptjax.cli import train as train_cli
    from gptjax.cli.common import split_config_overrides
    from gptjax.errors import GptjaxError
    from gptjax.train.loop import train

    rest, overrides = split_config_overrides(argv[split + 1:])
    train_args = argparse.ArgumentParser()
    train_cli.add_arguments(train_args)  # the train verb's arguments, multi-process flags included
    known = train_args.parse_args(rest)
    cfg = train_cli.joined_config(known, overrides)
    hooks = [] if args.kill_after_step is None else [KillAfterStep(args.kill_after_step, args.kill_during_save)]
    try:
        train(cfg, known.workdir, hooks=hooks)
    except GptjaxError as error:  # as `gptjax train` ends
        print(f"gptjax: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
