"""What several verbs share: `--config.a.b=v` overrides and loading a validated config."""
from __future__ import annotations

from gptjax.errors import GptjaxError


def split_config_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separates `--config.a.b=v` / `--config.a.b v` overrides from the other arguments."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            body = arg[len("--config."):]
            if "=" not in body:
                if i + 1 >= len(argv):
                    raise GptjaxError(f"override {arg} needs a value: {arg}=VALUE")
                body = f"{body}={argv[i + 1]}"
                i += 1
            overrides.append(body)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def load_config(path: str, overrides: list[str], processes: int = 1):
    """The validated config of an experiment file or a run's saved config.json (`path`) with `overrides` applied;
    on CPU also splits the host into per-core devices (before JAX starts) that divide this process's share of the
    microbatch (one of `processes` equal shares)."""
    from gptjax import config as config_lib
    from gptjax.parallel.mesh import configure_cpu_devices

    cd = config_lib.load_experiment(path)
    config_lib.apply_overrides(cd, overrides)
    cfg = config_lib.to_config(cd)
    configure_cpu_devices(cfg.train.cpu_devices, max(cfg.train.batch_size // cfg.train.grad_accum // processes, 1))
    return cfg
