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
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.steps = 700
  c.log_every = 25
  c.eval_every = 100
  c.restore_step = None
  c.aux_loss_weights = {"load_balancing": 1e-2, "z_loss": 1e-3}

  c.model = dict(vocab_size=256, d_model=256, num_layers=6, num_heads=8, max_len=256,
                 d_ff=1024, activation="gelu", num_experts=16, router="topk",
                 router_options={"k": 2}, expert_d_ff=512, moe_every=2, first_dense_layers=1,
                 dispatcher="sort", capacity_factor=1.25, tie_embeddings=True)
  c.optim = dict(learning_rate=2e-3, warmup_steps=70, weight_decay=0.1, clip_norm=1.0)
  c.data = dict(corpus="stdlib_py", tokenizer="byte", vocab_size=0, seq_len=256,
                batch_size=16, eval_batch_size=32, eval_max_batches=16)
  c.mesh = dict(data=2, expert=4, model=1)
  c.checkpoint = dict(every=100, keep=3)
  c.eval = dict(prompt="def ", sample_tokens=300, temperature=0.8, top_k=40)
  return c
