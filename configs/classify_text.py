r"""An MoE text classifier: which of 10 stdlib packages a 256-byte source snippet comes from.

    python -m moe_jax.train --config configs/classify_text.py --workdir runs/text --cpu_devices 8
    python -m moe_jax.evaluate --workdir runs/text --cpu_devices 8

Byte tokens (256 per snippet) + a CLS token, 2 layers, d_model 64, 8 experts top-2 in both,
mesh data=2 x expert=4 over 8 simulated CPU devices, 300 steps of 32 snippets. Baselines on the
same split (Python 3.11): majority 0.103, bag-of-bytes logistic regression 0.482. Reaches 0.438
validation accuracy (0.335 / 0.403 at steps 100 / 200, still rising) in 2 min 21 s on 2 CPU
cores (jax 0.10.2, ~11,000 tokens/s): 4x the majority baseline, not yet the bag-of-bytes one.
"""
import common


def get_config():
  c = common.classifier(steps=300, dataset="stdlib_package")
  c.log_every = 20
  c.eval_every = 100
  c.model.update(d_model=64, num_layers=2, num_heads=4, max_len=257, d_ff=128, num_experts=8,
                 expert_d_ff=128)
  c.classifier = dict(pool="cls", patch_size=1)
  c.optim.update(learning_rate=2e-3, warmup_steps=30)
  c.data.update(batch_size=32, eval_batch_size=64)
  return c
