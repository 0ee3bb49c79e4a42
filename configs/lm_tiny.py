r"""The demo: a small MoE byte-level LM on the embedded pydoc corpus, experts over 8 devices.

    python -m moe_jax.train --config configs/lm_tiny.py --workdir runs/lm_tiny --cpu_devices 8
    python -m moe_jax.evaluate --workdir runs/lm_tiny --cpu_devices 8

(`make demo` runs both.) A byte-level LM: 4 layers, d_model 128, 8 experts top-2 (expert_d_ff
256) in layers 1 and 3, 64-token windows, batch 32; mesh data=2 x expert=4 over 8 simulated CPU
devices (each device holds 2 experts). 400 steps. Reaches validation 2.01 bits/byte on
pydoc_topics (unigram entropy 4.70) in about 2 minutes for training and evaluation on 2 CPU
cores (jax 0.10.2); on one H100, with --config.mesh.data=1 --config.mesh.expert=1, 21 s.
"""
import common


def get_config():
  c = common.byte_lm(steps=400, corpus="pydoc_topics")
  c.log_every = 20
  c.eval_every = 100
  c.model.update(d_model=128, num_layers=4, num_heads=4, max_len=64, d_ff=256, num_experts=8,
                 expert_d_ff=256, moe_every=2, first_dense_layers=1)
  c.optim.update(learning_rate=3e-3, warmup_steps=50)
  # tokenizer='sentencepiece' (with vocab_size <= model.vocab_size) trains one into the workdir
  c.data.update(seq_len=64, batch_size=32, eval_batch_size=64, eval_max_batches=0)
  return c
