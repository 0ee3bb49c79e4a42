"""The base configs the sweeps start from, sized for 2 CPU cores, and their --quick versions.

LM sweeps train byte-level models on the embedded `stdlib_py` corpus (10.7 MB of Python
source): a default run sees well under one epoch (300 steps x 16 x 128 tokens = 0.6 M
tokens), so a bigger model cannot win by memorising. They start from configs/common.py's
recipe (AdamW, warmup + cosine, aux-loss weights of Switch / ST-MoE) on one device by default
(`mesh.data=-1`: every device the machine has, as data parallelism). --quick keeps the code
path and shrinks everything to seconds per run.
"""
from __future__ import annotations

import importlib.util
import pathlib

import ml_collections

_COMMON = pathlib.Path(__file__).resolve().parent.parent / "configs" / "common.py"


def _common():
  spec = importlib.util.spec_from_file_location("moe_jax_configs_common", _COMMON)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def lm(*, quick: bool, steps: int = 300, d_model: int = 96, num_layers: int = 4,
       expert_d_ff: int = 256) -> ml_collections.ConfigDict:
  """A byte-level decoder with MoE FFNs in layers 1 and 3 (every other layer after a dense
  first one, as Switch and GShard place them), top-1, the sort dispatcher."""
  c = _common().byte_lm(steps=steps, corpus="stdlib_py")
  c.model.update(d_model=d_model, num_layers=num_layers, num_heads=4, max_len=128,
                 d_ff=expert_d_ff, num_experts=8, expert_d_ff=expert_d_ff, moe_every=2,
                 first_dense_layers=1, router_options={"k": 1})
  c.optim.update(learning_rate=3e-3, warmup_steps=30)
  c.data.update(seq_len=128, batch_size=16, eval_batch_size=32, eval_max_batches=16)
  c.mesh.update(data=-1, expert=1, model=1)
  c.log_every = 25
  c.eval_every = 0
  c.checkpoint.update(every=100, keep=1)
  c.eval.update(sample_tokens=0)
  if quick:
    c.steps = 6
    c.model.update(d_model=32, num_heads=2, max_len=32, d_ff=32, expert_d_ff=32)
    c.optim.update(warmup_steps=2)
    c.data.update(seq_len=32, batch_size=8, eval_batch_size=8, eval_max_batches=2)
    c.log_every = 2
    c.checkpoint.update(every=3)
  return c


def lm_protocol(*, quick: bool, steps: int = 2000, d_model: int = 64,
                learning_rate: float = 3e-3) -> ml_collections.ConfigDict:
  """The CPU protocol (issue 27): `lm`'s layout at d_model 64 for ~20 tokens per active
  non-embedding parameter (2,000 steps x 16 x 128 = 4.1 M tokens for 197 k parameters),
  dropless (no token is dropped unless capacity is what a sweep studies), evaluated on the
  whole validation split (649 k bytes of stdlib_py), the training loss logged as the mean of
  each 50-step interval."""
  c = lm(quick=quick, steps=steps, d_model=d_model, expert_d_ff=4 * d_model)
  c.model.update(dispatcher="dropless")
  c.optim.update(learning_rate=learning_rate)
  if not quick:
    c.optim.update(warmup_steps=100)
    c.data.update(eval_batch_size=64, eval_max_batches=0)
    c.log_every = 50
    c.checkpoint.update(every=500, keep=1)
  return c


def classifier(*, quick: bool, config: str) -> ml_collections.ConfigDict:
  """A shipped classifier config (configs/classify_digits.py, classify_text.py) on the sweeps'
  one-device mesh, validated once at the end only."""
  from moe_jax import config as config_lib
  c = config_lib.load_file(_COMMON.parent / config)
  c.mesh.update(data=-1, expert=1, model=1)
  c.eval_every = 0
  c.checkpoint.update(every=100, keep=1)
  if quick:
    c.steps = 6
    c.model.update(d_model=32, num_heads=2, d_ff=32, expert_d_ff=32)
    c.optim.update(warmup_steps=2)
    c.data.update(batch_size=16, eval_batch_size=32, eval_max_batches=2)
    c.log_every = 2
    c.checkpoint.update(every=3)
  return c


GPU_TOKENS_PER_STEP = 256 * 256      # configs/lm_lm1b.py: 256 sequences of 256 tokens


def lm_gpu(*, d_model: int, num_layers: int) -> ml_collections.ConfigDict:
  """The accelerator-sized grids' base (`--grid gpu`, for what a CPU cannot reach): the lm1b
  recipe of configs/lm_lm1b.py (32k SentencePiece pieces, bfloat16 compute, SwiGLU experts in
  every other layer after a dense first one, 65,536 tokens per step) at `d_model` x
  `num_layers` (d_ff 4 d_model, head size 64), dropless, trained on 20 tokens per dense
  non-embedding parameter (Chinchilla), on one 8-GPU node's data=8 mesh. Not run on this
  project's machines."""
  from moe_jax import config as config_lib
  c = config_lib.load_file(_COMMON.parent / "lm_lm1b.py")
  c.model.update(d_model=d_model, num_layers=num_layers, num_heads=d_model // 64,
                 d_ff=4 * d_model, expert_d_ff=4 * d_model, num_experts=0,
                 dispatcher="dropless")
  c.steps = gpu_steps(d_model, num_layers)
  c.optim.update(warmup_steps=min(2000, c.steps // 10))
  c.mesh = dict(data=-1, expert=1, model=1)
  c.eval_every = 0
  return c


def dense_non_embedding(d_model: int, num_layers: int) -> int:
  """A dense SwiGLU transformer's non-embedding parameters, 4 d^2 (attention) + 3 d (4 d)
  (the FFN) per layer: the N a Chinchilla token budget is counted from."""
  return num_layers * (4 * d_model ** 2 + 12 * d_model ** 2)


def gpu_steps(d_model: int, num_layers: int) -> int:
  """Steps for 20 tokens per dense non-embedding parameter at GPU_TOKENS_PER_STEP."""
  return -(-20 * dense_non_embedding(d_model, num_layers) // GPU_TOKENS_PER_STEP)
