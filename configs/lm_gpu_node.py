r"""One 8-GPU node (e.g. 8x H100 80 GB): a ~1.9B-parameter (≈0.4B active) MoE byte LM.

    python -m moe_jax.train --config configs/lm_gpu_node.py --workdir runs/gpu_node

One process drives the node's 8 GPUs; for several nodes run one process per node with
--coordinator_address=HOST0:1234 --num_processes=N --process_id=I (docs/training.md,
"Multi-host").
d_model 1024, 16 layers, 64 experts top-2 in every other layer (expert_d_ff 2048), bfloat16
compute with float32 params, remat per block; mesh data=1 x expert=8: each GPU holds 8 experts
and tokens are split over all 8. 65,536 tokens per step. Not run on this project's machines (no
GPU node); `tests/test_config.py` validates it and builds its parameter shapes and shardings
abstractly. Expect hours per 10k steps; tune batch_size to memory.
"""
import common


def get_config():
  c = common.accelerator_lm(steps=20000, corpus="stdlib_py")
  c.log_every = 50
  c.eval_every = 1000
  c.model.update(d_model=1024, num_layers=16, num_heads=16, max_len=1024, d_ff=4096,
                 num_experts=64, expert_d_ff=2048)
  c.optim.update(learning_rate=6e-4, warmup_steps=1000)
  c.data.update(seq_len=1024, batch_size=64, eval_batch_size=64, eval_max_batches=50)
  c.mesh = dict(data=1, expert=8, model=1)
  c.checkpoint.update(every=1000)
  return c
