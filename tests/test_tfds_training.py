"""tfds datasets and the SentencePiece tokenizer through train() and evaluate(), on 8 simulated
devices: tfds on mock data (tfds.testing.mock_data), SentencePiece on the embedded corpus."""
import json
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from moe_jax import config as config_lib
from moe_jax.data import datasets
from moe_jax.data.sentencepiece_tokenizer import SentencePieceTokenizer
from moe_jax.evaluate import evaluate
from moe_jax.train import train
from tests.train_helpers import REPO, losses, small_config


@pytest.fixture
def mock_tfds():
  with tfds.testing.mock_data(num_examples=64):
    yield


@pytest.mark.slow   # make test's budget: test-all
def test_mock_mnist_moe_classifier_trains_and_evaluates(mock_tfds, tmp_path):
  cfg = config_lib.load_file(REPO / "configs" / "classify_digits.py")
  cfg.update(dict(steps=4, log_every=1))
  cfg.optim.warmup_steps = 1
  cfg.model.update(d_model=32, d_ff=64, expert_d_ff=64, num_heads=2, max_len=64, num_layers=1)
  cfg.classifier.patch_size = 4                        # 28x28 -> 49 patches + CLS
  cfg.data.update(dataset="mnist", batch_size=16, eval_batch_size=16)
  result = train(cfg, tmp_path / "run", progress=False)
  assert result["eval"]["examples"] == 64
  report = evaluate(None, tmp_path / "run")
  assert report["class_names"] == [str(d) for d in range(10)]
  assert 0.0 <= report["baselines"]["majority"] <= 1.0
  assert np.asarray(report["class_expert_load"]).shape == (10, 1, 8)
  assert (tmp_path / "run" / "confusion.png").exists()


@pytest.mark.slow   # make test's 15-minute budget: make test-all runs it
def test_mock_imdb_text_classifier_trains_on_padded_texts(mock_tfds, tmp_path):
  cfg = config_lib.load_file(REPO / "configs" / "classify_text.py")
  cfg.update(dict(steps=3, log_every=1))
  cfg.optim.warmup_steps = 1
  cfg.model.update(d_model=32, d_ff=64, expert_d_ff=64, num_heads=2, max_len=64, num_layers=1)
  cfg.data.update(dataset="imdb_reviews", seq_len=63, batch_size=16, eval_batch_size=16)
  result = train(cfg, tmp_path / "run", progress=False)
  assert np.isfinite(result["train"]["loss"]) and result["eval"]["examples"] == 64
  assert len(result["eval"]["per_class_accuracy"]) == 2
  report = evaluate(None, tmp_path / "run", plots=False)   # token_mask in every pass
  assert report["class_names"] == ["negative", "positive"]
  assert np.asarray(report["class_expert_load"]).shape == (2, 1, 8)


def test_mock_lm1b_packed_stream_resumes_exactly(mock_tfds, tmp_path):
  """The packed-document iterator's position goes into the checkpoint like grain's."""
  cfg = small_config(steps=8)
  cfg.data.update(corpus="lm1b", eval_max_batches=2)
  train(cfg, tmp_path / "a", progress=False)
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  shutil.rmtree(tmp_path / "b" / "checkpoints" / "8")
  train(cfg, tmp_path / "b", progress=False)
  assert losses(tmp_path / "b") == losses(tmp_path / "a") and len(losses(tmp_path / "a")) == 8
  report = evaluate(None, tmp_path / "b", plots=False)
  assert report["unigram_baseline"] == "unigram entropy of the evaluated validation bytes"


def test_sentencepiece_run_saves_and_reuses_its_tokenizer(tmp_path):
  cfg = small_config(steps=6)
  cfg.model.vocab_size = 512
  cfg.data.update(tokenizer="sentencepiece", vocab_size=384, tokenizer_train_bytes=200_000)
  result = train(cfg, tmp_path / "run", progress=False)
  path = tmp_path / "run" / datasets.TOKENIZER_FILE
  tokenizer = SentencePieceTokenizer.load(path)
  assert tokenizer.vocab_size == 384
  proto = path.read_bytes()
  # Bits per byte counts the bytes the pieces stand for, not tokens.
  ev = result["eval"]
  assert ev["bytes"] > 1.2 * ev["tokens"]   # 384 pieces: ~1.3 bytes each
  assert ev["bits_per_byte"] == pytest.approx(ev["loss"] * ev["tokens"] / ev["bytes"]
                                              / np.log(2), rel=1e-5)
  report = evaluate(None, tmp_path / "run", plots=False)   # loads the run's tokenizer
  assert path.read_bytes() == proto
  assert report["bits_per_byte"] > 0 and isinstance(report["sample"], str)
  saved = json.loads((tmp_path / "run" / "eval.json").read_text())
  assert saved["bytes"] == report["bytes"]
  path.unlink()
  with pytest.raises(FileNotFoundError, match="tokenizer"):
    evaluate(None, tmp_path / "run")
