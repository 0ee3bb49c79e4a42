"""A few-hundred-step run on the embedded corpus learns real structure: validation bits per
byte at most 0.75 x the corpus's unigram entropy (what a context-free model can reach)."""
import pytest

from moe_jax import config as config_lib
from moe_jax.data import load_corpus, unigram_entropy_bits
from moe_jax.train import train
from tests.train_helpers import TINY


@pytest.mark.slow   # make test's 15-minute budget: make test-all runs it
def test_lm_tiny_beats_unigram_entropy_on_8_devices(tmp_path):
  cfg = config_lib.load_file(TINY)          # mesh data=2 x expert=4, 8 experts top-2
  cfg.model.update(d_model=64, num_layers=2, num_heads=2, d_ff=128, expert_d_ff=128,
                   first_dense_layers=0, moe_every=2)
  cfg.update(dict(steps=200, log_every=50, eval_every=0))
  cfg.optim.warmup_steps = 20
  cfg.checkpoint.every = 200
  result = train(cfg, tmp_path / "run", progress=False)
  entropy = unigram_entropy_bits(load_corpus("pydoc_topics", "train"))
  bpb = result["eval"]["bits_per_byte"]
  print(f"validation bits/byte {bpb:.3f}, unigram entropy {entropy:.3f}")
  assert bpb <= 0.75 * entropy, (bpb, entropy)
  assert result["train"]["layer0/dropped_fraction"] < 0.5
