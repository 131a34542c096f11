"""gptjax: a JAX/Flax, TPU-first codebase for building GPT-style language models from scratch."""
from setuptools import find_packages, setup

CORE = [
    "jax>=0.6",
    "flax>=0.10",
    "optax>=0.2",
    "orbax-checkpoint>=0.11",
    "grain>=0.2.10",
    "ml_collections>=1.0",
    "sentencepiece>=0.2",
    "numpy>=1.26",
    "tqdm>=4.60",
    "safetensors>=0.4",
    "tensorboardX>=2.6",
    "tensorflow-datasets>=4.9",
    "regex>=2023.0",
]
DATA = ["py3langid>=0.3", "zstandard>=0.22", "pyarrow>=15", "datasketch>=1.6"]
HF = ["torch==2.13.0", "transformers>=4.45", "tokenizers>=0.19", "jinja2>=3.1"]  # jinja2: hf_chat templates
TEST = ["pytest>=8", "pytest-timeout>=2.3", "tiktoken>=0.7", "ruff>=0.17,<0.18"]  # ruff: .ci/run lints before the tests
EVAL = ["lm-eval>=0.4"]
LM_EVAL_HF = ["accelerate>=0.26"]  # lm-eval's HF backend, the reference the eval cross-checks run against
FINETUNE_REFS = ["peft>=0.13", "trl>=0.12"]  # LoRA and DPO cross-checks (tests only)
PLOTS = ["matplotlib>=3.8", "scipy>=1.11"]  # ablation reports, scaling-law fits
DEDUP_REF = ["datatrove>=0.4"]  # near-dedup comparison (benchmarks/prepare.py, tests)
GCS = ["gcsfs>=2024.2"]  # gs:// workdirs and data (fsspec; orbax writes checkpoints through tensorstore)
GCS_EMULATOR = ["gcp-storage-emulator>=2024.8"]  # a local GCS stand-in for the gs:// tests
WANDB = ["wandb>=0.19"]  # the optional Weights & Biases tracker (train.wandb_project)
# gptjax prepare --runner beam (Dataflow, Flink, Spark; DirectRunner in the tests). Beam needs protobuf<7, and
# sentencepiece 0.2.3's model proto (read by transformers' tokenizer conversion) refuses a protobuf older than 7.36
BEAM = ["apache-beam>=2.60", "sentencepiece>=0.2,<0.2.3"]
SERVE = ["fastapi>=0.110", "uvicorn>=0.29"]  # gptjax serve, the OpenAI-compatible server
SERVE_CLIENTS = ["openai>=1.30", "httpx>=0.27", "tenacity>=8"]  # real clients the server tests use (tenacity: lm-eval's
# local-completions model)

setup(
    name="gptjax",
    version="0.1.0",
    description=("Build GPT-style language models from scratch in JAX/Flax: data, pretraining, eval, finetuning, "
                 "export."),
    packages=find_packages(include=["gptjax", "gptjax.*"]),
    package_data={"gptjax": ["data/bundled/*", "data/bundled/english/*/*", "eval/tasks/*.json", "eval/tasks/*.md"]},
    python_requires=">=3.10",
    install_requires=CORE + DATA,
    extras_require={
        "data": DATA,
        "hf": HF,
        "eval": EVAL,
        "plots": PLOTS,
        "gcs": GCS,
        "wandb": WANDB,
        "beam": BEAM,
        "serve": SERVE,
        # libtpu: compile-check AOT-compiles for TPU here
        "test": (TEST + HF + EVAL + LM_EVAL_HF + FINETUNE_REFS + PLOTS + DEDUP_REF + GCS + GCS_EMULATOR + WANDB
                 + BEAM + SERVE + SERVE_CLIENTS + ["jax[tpu]"]),
        "tpu": ["jax[tpu]"] + GCS,
        "gpu": ["jax[cuda12]"],
    },
    entry_points={
        "console_scripts": ["gptjax=gptjax.cli:main", "gptjax-lm-eval=gptjax.interop.lm_eval:main"],
        # read by lm-eval releases with plugin discovery (upstream PR #4013); 0.4.13 needs gptjax-lm-eval
        "lm_eval.models": ["gptjax=gptjax.interop.lm_eval:GptjaxHarnessLM"],
    },
)
