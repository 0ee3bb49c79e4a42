r"""lm1b (One Billion Word, tfds) with a SentencePiece vocabulary: an MoE LM on one 8-GPU node.

    python -m moe_jax.train --config configs/lm_lm1b.py --workdir runs/lm1b \
        --config.data.data_dir=~/tensorflow_datasets
    python -m moe_jax.evaluate --workdir runs/lm1b

Prepare the data once on a machine with internet (docs/data.md, "tfds datasets"):
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
import common


def get_config():
  c = common.accelerator_lm(steps=100000, corpus="lm1b")
  c.log_every = 100
  c.eval_every = 5000
  c.model.update(vocab_size=32768, d_model=512, num_layers=8, num_heads=8, max_len=256,
                 d_ff=2048, num_experts=32, expert_d_ff=1024, tie_embeddings=True,
                 remat=False)
  c.optim.update(learning_rate=6e-4, warmup_steps=2000)
  c.data.update(data_dir="", tokenizer="sentencepiece", vocab_size=32000,
                tokenizer_train_bytes=20_000_000, seq_len=256, batch_size=256,
                eval_batch_size=256, eval_max_batches=64)
  c.mesh = dict(data=1, expert=8, model=1)
  c.checkpoint.update(every=5000)
  c.eval.update(prompt="The ", sample_tokens=64)
  return c
