r"""An MoE ViT-style classifier on scikit-learn's bundled 8x8 digits, experts over 8 devices.

    python -m moe_jax.train --config configs/classify_digits.py --workdir runs/digits --cpu_devices 8
    python -m moe_jax.evaluate --workdir runs/digits --cpu_devices 8

2x2 patches (16 per image) + a CLS token, 2 layers, d_model 96, 8 experts top-2 (expert choice
works here too: an encoder may use non-causal routers), mesh data=2 x expert=4 over 8 simulated
CPU devices, 400 steps of 64 images. Baselines on the same split: majority 0.10, logistic
regression on pixels 0.9725. Reaches 0.9725 validation accuracy in about 40 s on 2 CPU
cores (jax 0.10.2); mean pooling instead of CLS reached only 0.88 (d_model 64).
"""
import common


def get_config():
  c = common.classifier(steps=400, dataset="digits")
  c.log_every = 20
  c.eval_every = 100
  c.model.update(d_model=96, num_layers=2, num_heads=4, max_len=32, d_ff=192, num_experts=8,
                 expert_d_ff=192)
  c.classifier = dict(pool="cls", patch_size=2)
  c.optim.update(learning_rate=2e-3, warmup_steps=40)
  c.data.update(batch_size=64, eval_batch_size=64)
  return c
