"""Time and peak memory of gptjax <-> Hugging Face conversion for a GPT-2 124M-shaped model, or a Mixtral-shaped
mixture of experts (random weights).

Each step runs in a fresh Python process, so its peak RSS is its own: the model in memory plus what the
conversion adds. Writes a markdown report (default ``benchmarks/results/convert.md``, or ``convert_mixtral.md``)
whose first lines give the command that produced it. Run from the repository root:

    python benchmarks/convert.py [--shape gpt2_124m|mixtral] [--workspace DIR] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

RESULTS = REPO_ROOT / "benchmarks" / "results"
GPT2_FIXTURES = REPO_ROOT / "tests" / "fixtures" / "gpt2"
SEED = 0
STEPS = {
    "export-hf": "gptjax params in memory -> HF model dir of the family (float32 safetensors [+ tokenizer])",
    "export-hf-bf16": "gptjax params in memory -> HF dir, bfloat16 safetensors",
    "import-hf": "HF dir -> gptjax params in memory (then checked against the originals, untimed)",
    "import-workdir": "HF dir -> new gptjax workdir (`gptjax import`: step-0 orbax checkpoint + Adam state)",
    "export-native": "gptjax params in memory -> `gptjax export --format safetensors` dir",
    "load-native": "`gptjax export` dir -> LM (`gptjax.load`)",
}


def gpt2_124m_config():
    """The gptjax Config of GPT-2 small: 12 layers, 768 wide, 12 heads, vocab 50257, 1024 positions."""
    from gptjax.config import Config, ModelConfig

    return Config(name="gpt2-124m-random", model=ModelConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12,
                                                             d_model=768, use_bias=True, tie_embeddings=True))


def mixtral_config():
    """Mixtral 8x7B's structure (8 experts, top-2 softmax routing renormalised, GQA 4:1, SwiGLU experts 3.5x wide,
    RMSNorm, rope θ 1e6, untied head, vocab 32000) at 4 layers x 1024 wide, which fits this 2-core box's memory."""
    from gptjax.config import Config, ModelConfig

    return Config(name="mixtral-shaped-random", model=ModelConfig(
        vocab_size=32000, block_size=1024, n_layer=4, n_head=16, n_kv_head=4, d_model=1024, d_ff=3584,
        norm="rmsnorm", position="rope", rope_theta=1e6, mlp="swiglu", use_bias=False, tie_embeddings=False,
        moe_experts=8, moe_top_k=2, moe_z_loss_weight=0.0))


SHAPES = {"gpt2_124m": (gpt2_124m_config, "GPT-2 small (12 layers, d_model 768, 12 heads, vocab 50257 padded to "
                                          "50304 in gptjax, 1024 learned positions, tied head, biases)"),
          "mixtral": (mixtral_config, "Mixtral-shaped (4 layers, d_model 1024, 16 heads / 4 KV heads, 8 experts "
                                      "of width 3584, top-2, vocab 32000, untied head)")}


def random_params(model_cfg, seed: int) -> dict:
    """Random float32 params in gptjax's layout (std 0.02, norm scales 1), without compiling anything."""
    import numpy as np

    from gptjax import export

    rng = np.random.default_rng(seed)
    flat = {}
    for name, shape in export.expected_param_shapes(model_cfg).items():
        flat[name] = (np.ones(shape, np.float32) if name.endswith("scale")
                      else rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02))
    return export.unflatten_params(flat)


def shape_tokenizer(shape: str):
    """GPT-2 BPE for the GPT-2 shape; none (a weights-only directory, as Mixtral checkpoints are converted) else."""
    if shape != "gpt2_124m":
        return None
    from gptjax.data.tokenizer import Gpt2BpeAdapter

    return Gpt2BpeAdapter((GPT2_FIXTURES / "gpt2_vocab.json").read_bytes(),
                          (GPT2_FIXTURES / "gpt2_merges.txt").read_bytes())


def memory_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB, from /proc/self/status."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def run_step(step: str, workspace: Path, shape: str) -> dict:
    """Runs one step in this process; returns its seconds, RSS before and peak RSS, and output size."""
    import numpy as np

    from gptjax import export
    from gptjax.api import LM
    from gptjax.interop import hf

    cfg = SHAPES[shape][0]()
    hf_dir, output = workspace / "hf", workspace / step
    params = random_params(cfg.model, SEED) if step in ("export-hf", "export-hf-bf16", "export-native") else None
    tokenizer = shape_tokenizer(shape)
    rss_before, _ = memory_mib()
    started = time.perf_counter()
    detail = ""
    if step == "export-hf":
        hf.export_hf(cfg, params, tokenizer, hf_dir)
        output = hf_dir
    elif step == "export-hf-bf16":
        hf.export_hf(cfg, params, tokenizer, output, dtype="bfloat16")
    elif step == "import-hf":
        imported = hf.read_hf_dir(hf_dir)
        seconds = time.perf_counter() - started
        _, peak = memory_mib()
        original = export.flatten_params(random_params(cfg.model, SEED))
        back = export.flatten_params(imported.params)
        vocab = cfg.model.vocab_size
        exact = all(np.array_equal(original[k][:vocab], back[k][:vocab]) if k == "embedding"
                    else np.array_equal(original[k], back[k]) for k in original)
        detail = f"all params bit-identical to the originals: {exact}"
        output = hf_dir
    elif step == "import-workdir":
        hf.import_hf(hf_dir, output)
    elif step == "export-native":
        export.export_native(LM(cfg, params, tokenizer, step=0), output)
    elif step == "load-native":
        export.load_export(workspace / "export-native")
        output = workspace / "export-native"
    else:
        raise ValueError(f"unknown step {step}")
    if step != "import-hf":
        seconds = time.perf_counter() - started
        _, peak = memory_mib()
    return {"step": step, "seconds": seconds, "rss_before_mib": rss_before, "peak_rss_mib": peak,
            "output_bytes": directory_bytes(output), "detail": detail}


def run_in_child(step: str, workspace: Path, shape: str) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"), "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, __file__, "--step", step, "--workspace", str(workspace), "--shape", shape],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"step {step} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(results: list[dict], command: str, n_params: int, versions: dict, shape: str) -> str:
    tokenizer = "GPT-2 BPE tokenizer from tests/fixtures/gpt2" if shape == "gpt2_124m" else "no tokenizer"
    lines = [
        f"# gptjax <-> Hugging Face conversion: {shape} shape",
        "",
        f"Command (from the repository root): `{command}`",
        "",
        f"Model: gptjax Config of {SHAPES[shape][1]}, {n_params / 1e6:.1f}M params in gptjax's layout "
        f"(padded vocab rows included), random weights "
        f"(seed {SEED}); {tokenizer}. Each step runs in a fresh process "
        f"(JAX on CPU); 'RSS before' is that process after building its inputs (imports, and the params for "
        f"export steps), 'peak RSS' its high-water mark. Output size counts every file written.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs visible, {platform.platform()}, Python "
        f"{platform.python_version()}; {', '.join(f'{k} {v}' for k, v in versions.items())}.",
        "",
        "| step | what | seconds | RSS before (MiB) | peak RSS (MiB) | output (MB) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['step']} | {STEPS[r['step']]} | {r['seconds']:.2f} | {r['rss_before_mib']:.0f} | "
                     f"{r['peak_rss_mib']:.0f} | {r['output_bytes'] / 1e6:.1f} |")
    details = [f"- {r['step']}: {r['detail']}" for r in results if r["detail"]]
    if details:
        lines += ["", *details]
    return "\n".join(lines) + "\n"


def package_versions() -> dict:
    from importlib import metadata

    versions = {}
    for name in ("jax", "flax", "orbax-checkpoint", "safetensors", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", help="scratch directory for the converted files (default: a temp dir)")
    parser.add_argument("--shape", choices=list(SHAPES), default="gpt2_124m", help="the model converted")
    parser.add_argument("--out", help="markdown report path (default benchmarks/results/convert[_SHAPE].md)")
    parser.add_argument("--step", choices=list(STEPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(run_step(args.step, Path(args.workspace), args.shape)))
        return
    command = "python benchmarks/convert.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    workspace = Path(args.workspace or tempfile.mkdtemp(prefix="gptjax-convert-"))
    if workspace.exists() and any(workspace.iterdir()):
        raise SystemExit(f"--workspace {workspace} is not empty")
    workspace.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for step in STEPS:
            result = run_in_child(step, workspace, args.shape)
            print(f"{step}: {result['seconds']:.2f} s, peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
            results.append(result)
    finally:
        if not args.workspace:
            shutil.rmtree(workspace, ignore_errors=True)
    from gptjax import export

    model_cfg = SHAPES[args.shape][0]().model
    n_params = sum(math.prod(shape) for shape in export.expected_param_shapes(model_cfg).values())
    text = markdown(results, command, n_params, package_versions(), args.shape)
    out = Path(args.out or RESULTS / ("convert.md" if args.shape == "gpt2_124m" else f"convert_{args.shape}.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
