r"""A TPU pod slice with 256 chips (e.g. v5e-256): a 64-expert MoE LM, experts over 64 chips.

    python -m moe_jax.train --config configs/lm_tpu_pod.py --workdir gs://BUCKET/runs/pod

Run the same command on every host of the slice (e.g. `gcloud compute tpus tpu-vm ssh NAME
--worker=all --command=...`); JAX detects the pod and every host reads its own shard of the data.
d_model 2048, 24 layers, 64 experts top-2 in every other layer (expert_d_ff 4096), bfloat16
compute, remat; mesh data=4 x expert=64 x model=1: each chip holds one expert, tokens are split
over all 256 chips. 1M tokens per step. Not run on this project's machines; `tests/
test_config.py` validates it and builds its parameter shapes and shardings abstractly on a
256-device abstract mesh. The `dropless` dispatcher uses jax.lax.ragged_dot on TPU.
"""
import common


def get_config():
  c = common.accelerator_lm(steps=50000, corpus="stdlib_py")
  c.log_every = 100
  c.eval_every = 2000
  c.model.update(d_model=2048, num_layers=24, num_heads=16, max_len=2048, d_ff=8192,
                 num_experts=64, expert_d_ff=4096)
  c.optim.update(learning_rate=3e-4, warmup_steps=2000)
  c.data.update(seq_len=2048, batch_size=512, eval_batch_size=512, eval_max_batches=20)
  c.mesh = dict(data=4, expert=64, model=1)
  c.checkpoint.update(every=1000, keep=5)
  return c
