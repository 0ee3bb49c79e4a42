r"""The base of the scaling ablations: a 6-layer MoE byte LM on the stdlib's Python sources.

    python -m moe_jax.train --config configs/lm_small.py --workdir runs/lm_small --cpu_devices 8
    python -m moe_jax.evaluate --workdir runs/lm_small --cpu_devices 8

d_model 256, 6 layers, 16 experts top-2 in layers 1, 3, 5 (expert_d_ff 512), 4,096 tokens per
step, mesh data=2 x expert=4 over 8 simulated CPU devices; 700 steps (2.9M tokens). Time on
this machine (2 CPU cores, jax 0.10.2): 2.45 s/step (1,670 tokens/s, measured over steps 30-40
of a 40-step run), so about 29 minutes plus evaluation; cross-entropy 2.51 nats (3.6 bits/byte)
after 40 steps. Ablations
override one field at a time, e.g. --config.model.num_experts=32 or
--config.model.router_options.k=1.
"""
import common


def get_config():
  c = common.byte_lm(steps=700, corpus="stdlib_py")
  c.log_every = 25
  c.eval_every = 100
  c.model.update(d_model=256, num_layers=6, num_heads=8, max_len=256, d_ff=1024,
                 num_experts=16, expert_d_ff=512, moe_every=2, first_dense_layers=1)
  c.optim.update(learning_rate=2e-3, warmup_steps=70)
  c.data.update(seq_len=256, batch_size=16, eval_batch_size=32, eval_max_batches=16)
  c.eval.update(prompt="def ", sample_tokens=300)
  return c
