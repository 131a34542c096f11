"""Mixtral-8x7B's shape: 32 layers, 4096 wide, 32 heads / 8 KV heads, 8 SwiGLU experts of 14336 with top-2
softmax routing (renormalised), RoPE theta 1e6, RMSNorm, vocab 32000; 46.7B params, 12.9B active per token. Trained
here at a 4096 context, 256 sequences (1M tokens) a step, dropless experts, Switch balance loss 0.01 (HF Mixtral's
router_aux_loss_coef 0.02 weighs a k-times-larger form: 0.04 in gptjax's terms, what `gptjax import` maps it to).

gptjax train --config experiments/mixtral_8x7b.py --workdir runs/mixtral --config.data.path=data/corpus-sp32k
Target: a v5p-64 slice (TOPOLOGY, 32 chips). Experts are sharded over fsdp, which must divide the 8 experts, so the
chips are fsdp 8 x tensor 4 (every param still split 32 ways: experts over fsdp, their width over tensor), full
remat, 8 microbatches of 32 sequences:
  gptjax compile-check --config experiments/mixtral_8x7b.py --topology v5p-64
(74.39 GiB of 95 per chip; 14.8 s a step at 40% MFU, FLOPs counted on the active params.)
"""
from pathlib import Path

from gptjax.config import load_experiment

TOPOLOGY = "v5p-64"


def get_config():
    c = load_experiment(Path(__file__).with_name("llama_1b.py"))
    c.name = "mixtral_8x7b"
    c.model.block_size = 4096
    c.model.n_layer = 32
    c.model.n_head = 32
    c.model.n_kv_head = 8
    c.model.d_model = 4096
    c.model.d_ff = 14336
    c.model.rope_theta = 1e6
    c.model.norm_eps = 1e-5
    c.model.moe_experts = 8
    c.model.moe_top_k = 2
    c.model.moe_router = "softmax_topk"
    c.model.moe_renormalize = True
    c.model.moe_dispatch = "dropless"
    c.model.remat = "full"
    c.train.batch_size = 256
    c.train.grad_accum = 8
    c.train.lr = 3e-4
    c.train.min_lr = 3e-5
    c.mesh.data = 1
    c.mesh.fsdp = 8
    c.mesh.tensor = -1
    return c
