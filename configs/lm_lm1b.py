r"""lm1b (One Billion Word, tfds) with a SentencePiece vocabulary: an MoE LM on one 8-GPU node.

    python -m moe_jax.train --config configs/lm_lm1b.py --workdir runs/lm1b \
        --config.data.data_dir=~/tensorflow_datasets
    python -m moe_jax.evaluate --workdir runs/lm1b

Prepare the data once on a machine with internet (README, "Datasets"):
    pip install -e '.[tf]' && tfds build lm1b --data_dir ~/tensorflow_datasets --file_format array_record
A 32k-piece SentencePiece unigram model is trained on the first 20 MB of the training
sentences when the run starts (10 MB of stdlib source took 18 s here) and is saved as
runs/lm1b/tokenizer.model; sentences are shuffled and packed into 256-token windows, each
ending with </s> (boundaries marked, not masked). d_model 512, 8 layers, 32 experts top-2 in
every other layer (expert_d_ff 1024), bfloat16 compute; mesh data=1 x expert=8. 100k steps of
256 x 256 tokens (6.6B tokens). Validation: the first 64 batches of the test split; bits/byte
counts the bytes each piece stands for. Not run on this project's machines (no GPU with the
dataset), so no result or time is claimed: the pipeline is tested on mock lm1b sentences and
`tests/test_config.py` validates and builds this config abstractly.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.steps = 100000
  c.log_every = 100
  c.eval_every = 5000
  c.restore_step = None
  c.aux_loss_weights = {"load_balancing": 1e-2, "z_loss": 1e-3}
  c.model = dict(vocab_size=32768, d_model=512, num_layers=8, num_heads=8, max_len=256,
                 d_ff=2048, activation="silu", glu=True, num_experts=32, router="topk",
                 router_options={"k": 2}, expert_d_ff=1024, moe_every=2, first_dense_layers=1,
                 dispatcher="sort", capacity_factor=1.25, tie_embeddings=True,
                 dtype="bfloat16", param_dtype="float32")
  c.optim = dict(learning_rate=6e-4, warmup_steps=2000, weight_decay=0.1, clip_norm=1.0)
  c.data = dict(corpus="lm1b", data_dir="", tokenizer="sentencepiece", vocab_size=32000,
                tokenizer_train_bytes=20_000_000, seq_len=256, batch_size=256,
                eval_batch_size=256, eval_max_batches=64)
  c.mesh = dict(data=1, expert=8, model=1)
  c.checkpoint = dict(every=5000, keep=3, async_save=True)
  c.eval = dict(prompt="The ", sample_tokens=64, temperature=0.8, top_k=40)
  return c
