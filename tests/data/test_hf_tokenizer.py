"""A checkpoint's tokenizer.json through the `tokenizers` library: the ids transformers gives,
bytes per token for bits per byte, the end-of-document token, and one-line refusals."""
import json
import pathlib

import numpy as np
import pytest

from moe_jax.data.hf_tokenizer import HFTokenizer

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures" / "hf" / "tokenizers"
REFERENCE = json.loads((FIXTURES / "reference_ids.json").read_text())


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_ids_and_decoding_equal_transformers(name):
  tok = HFTokenizer.load(FIXTURES / name)
  for row in REFERENCE[name]:
    ids = tok.encode(row["text"])
    assert ids.dtype == np.int32
    assert ids.tolist() == row["ids"], row["text"]
    assert tok.decode(ids) == row["decoded"]


def test_byte_level_bytes_per_token_add_up_to_the_text_exactly():
  tok = HFTokenizer.load(FIXTURES / "byte_level" / "tokenizer.json")
  for row in REFERENCE["byte_level"][:-2]:     # not the one with special tokens' spellings
    assert tok.bytes_per_token[tok.encode(row["text"])].sum() == len(row["text"].encode())
  assert tok.eos_id == tok._tok.token_to_id("<|endoftext|>")     # named by tokenizer_config
  assert tok.bytes_per_token[tok.eos_id] == 0


def test_sentencepiece_style_counts_its_prefix_space_and_byte_pieces():
  tok = HFTokenizer.load(FIXTURES / "sentencepiece_style")
  for row in REFERENCE["sentencepiece_style"][:-2]:
    text = row["text"]
    want = len(text.encode()) + (1 if text else 0)       # the '▁' the tokenizer prepends
    assert tok.bytes_per_token[tok.encode(text)].sum() == want, text
  assert tok.eos_id == tok._tok.token_to_id("</s>")      # found by its spelling
  assert tok.bytes_per_token[tok._tok.token_to_id("<0xE6>")] == 1


def test_bad_tokenizer_files_are_one_line(tmp_path):
  with pytest.raises(FileNotFoundError, match="No such tokenizer file"):
    HFTokenizer.load(tmp_path / "tokenizer.json")
  (tmp_path / "tokenizer.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"is not a tokenizer.json the tokenizers library can "
                                       r"read: \S"):
    HFTokenizer.load(tmp_path)
  spec = json.loads((FIXTURES / "byte_level" / "tokenizer.json").read_text())
  (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
  with pytest.raises(ValueError, match=r"names eos_token '<\|im_end\|>', which .* does not have"):
    HFTokenizer.load(tmp_path)
  (tmp_path / "tokenizer_config.json").unlink()
  spec["added_tokens"] = []
  spec["model"]["vocab"].pop("<|endoftext|>")
  (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
  with pytest.raises(ValueError, match="cannot tell the end-of-document token"):
    HFTokenizer.load(tmp_path)


# make test's budget: test-all (make test imports a checkpoint with its tokenizer.json and
# evaluates text with it: tests/test_hf_cli.py)
@pytest.mark.slow
def test_a_run_trains_evaluates_and_resumes_on_a_tokenizer_json(tmp_path):
  """data.tokenizer names a tokenizer.json: it is copied into the workdir when the run starts,
  and evaluate (as a resume) reads that copy (the original may be gone)."""
  import shutil
  from moe_jax.evaluate import evaluate
  from moe_jax.train import train
  from tests.train_helpers import small_config
  source = tmp_path / "downloaded"
  shutil.copytree(FIXTURES / "byte_level", source)
  cfg = small_config(steps=3)
  cfg.model.vocab_size = 512
  cfg.data.tokenizer = str(source / "tokenizer.json")
  cfg.eval.sample_tokens = 0
  workdir = tmp_path / "run"
  result = train(cfg, workdir, progress=False)
  assert (workdir / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
  assert (workdir / "tokenizer_config.json").exists()
  shutil.rmtree(source)
  evaluation = evaluate(None, workdir, plots=False)
  assert evaluation["bits_per_byte"] == pytest.approx(result["eval"]["bits_per_byte"], rel=1e-5)
  # a token covers more than a byte on average: bits per byte below bits per token
  assert evaluation["bits_per_byte"] < evaluation["loss"] / np.log(2)

  small = small_config(steps=4)
  small.data.tokenizer = str(FIXTURES / "byte_level" / "tokenizer.json")
  with pytest.raises(ValueError, match=r"config.model.vocab_size=256 is smaller than the "
                                       r"tokenizer's 400 tokens"):
    train(small, tmp_path / "too_small", progress=False)
  small.data.tokenizer = "tokenizer.bin"
  with pytest.raises(ValueError, match=r"'tokenizer'='tokenizer.bin' is not allowed; allowed: "
                                       r"'byte', 'sentencepiece', 'PATH/tokenizer.json'"):
    train(small, tmp_path / "bad_name", progress=False)
