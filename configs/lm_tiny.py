r"""The demo: a small MoE byte-level LM on the embedded pydoc corpus, experts over 8 devices.

    python -m moe_jax.train --config configs/lm_tiny.py --workdir runs/lm_tiny --cpu_devices 8
    python -m moe_jax.evaluate --workdir runs/lm_tiny --cpu_devices 8

(`make demo` runs both.) A byte-level LM: 4 layers, d_model 128, 8 experts top-2 (expert_d_ff
256) in layers 1 and 3, 64-token windows, batch 32; mesh data=2 x expert=4 over 8 simulated CPU
devices (each device holds 2 experts). 400 steps. Reaches validation 2.02 bits/byte on
pydoc_topics (unigram entropy 4.70) in about 2 minutes for training and evaluation on 2 CPU
cores (jax 0.10.2); on one H100, with --config.mesh.data=1 --config.mesh.expert=1, 21 s.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.steps = 400
  c.log_every = 20
  c.eval_every = 100
  c.restore_step = None
  c.aux_loss_weights = {"load_balancing": 1e-2, "z_loss": 1e-3}

  c.model = dict(vocab_size=256, d_model=128, num_layers=4, num_heads=4, max_len=64,
                 d_ff=256, activation="gelu", num_experts=8, router="topk",
                 router_options={"k": 2}, expert_d_ff=256, moe_every=2, first_dense_layers=1,
                 dispatcher="sort", capacity_factor=1.25, tie_embeddings=True)
  c.optim = dict(learning_rate=3e-3, warmup_steps=50, weight_decay=0.1, clip_norm=1.0)
  # tokenizer='sentencepiece' (with vocab_size <= model.vocab_size) trains one into the workdir
  c.data = dict(corpus="pydoc_topics", tokenizer="byte", vocab_size=0, seq_len=64,
                batch_size=32, eval_batch_size=64, eval_max_batches=0)
  c.mesh = dict(data=2, expert=4, model=1)
  c.checkpoint = dict(every=100, keep=3)
  c.eval = dict(prompt="The ", sample_tokens=200, temperature=0.8, top_k=40)
  return c
