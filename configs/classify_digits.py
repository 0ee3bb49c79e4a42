r"""An MoE ViT-style classifier on scikit-learn's bundled 8x8 digits, experts over 8 devices.

    python -m moe_jax.train --config configs/classify_digits.py --workdir runs/digits --cpu_devices 8
    python -m moe_jax.evaluate --workdir runs/digits --cpu_devices 8

2x2 patches (16 per image) + a CLS token, 2 layers, d_model 96, 8 experts top-2 (expert choice
works here too: an encoder may use non-causal routers), mesh data=2 x expert=4 over 8 simulated
CPU devices, 400 steps of 64 images. Baselines on the same split: majority 0.10, logistic
regression on pixels 0.9725. Reaches 0.9725 validation accuracy in about 40 s on 2 CPU
cores (jax 0.10.2); mean pooling instead of CLS reached only 0.88 (d_model 64).
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "classification"
  c.seed = 0
  c.steps = 400
  c.log_every = 20
  c.eval_every = 100
  c.restore_step = None
  c.aux_loss_weights = {"load_balancing": 1e-2, "z_loss": 1e-3}
  c.model = dict(vocab_size=256, d_model=96, num_layers=2, num_heads=4, max_len=32, d_ff=192,
                 activation="gelu", num_experts=8, router="topk", router_options={"k": 2},
                 expert_d_ff=192, moe_every=1, first_dense_layers=0, dispatcher="sort",
                 capacity_factor=1.25, tie_embeddings=True)
  c.classifier = dict(pool="cls", patch_size=2)
  c.optim = dict(learning_rate=2e-3, warmup_steps=40, weight_decay=0.05, clip_norm=1.0)
  c.data = dict(dataset="digits", batch_size=64, eval_batch_size=64, eval_max_batches=0)
  c.mesh = dict(data=2, expert=4, model=1)
  c.checkpoint = dict(every=100, keep=3)
  c.eval = dict()
  return c
