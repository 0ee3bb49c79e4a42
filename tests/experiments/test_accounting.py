"""experiments/accounting.py: the parameter and FLOP counts the scaling plots stand on, against
the counts written out for small models."""
import pytest

from experiments.accounting import account
from moe_jax import config as config_lib
from tests.train_helpers import REPO

SEQ_LEN, LAYERS, D_MODEL, VOCAB = 64, 4, 128, 256


def _run(*overrides):
  cfg = config_lib.load_file(REPO / "configs" / "lm_tiny.py")
  return config_lib.validate(cfg, num_devices=1, overrides=[
      "mesh.data=1", "mesh.expert=1", "mesh.model=1", *overrides])


def test_dense_lm_counts_every_weight_once_and_attention_per_position():
  run = _run("model.num_experts=0")
  counts = account(run)
  d, f, s = D_MODEL, run.model.d_ff, SEQ_LEN
  per_layer = 4 * d * d + 2 * d * f + 2 * d          # q, k, v, o; the FFN; two norm scales
  total = VOCAB * d + LAYERS * per_layer + d          # embedding (tied); the final norm
  assert counts["total_params"] == counts["active_params"] == total
  assert counts["expert_params"] == 0
  assert counts["non_embedding_params"] == total - VOCAB * d
  assert counts["flops_per_token"] == (2 * (total - VOCAB * d) + 2 * VOCAB * d
                                       + 2 * LAYERS * s * d)


def test_moe_layers_count_k_of_e_experts_and_measured_experts_per_token():
  run = _run()                                        # 8 experts, top-2, in layers 1 and 3
  e, f = run.model.moe.num_experts, run.model.moe.expert_d_ff
  one_layer = e * 2 * D_MODEL * f
  nominal, measured = account(run), account(run, experts_per_token={1: 1.0, 3: 3.0})
  assert nominal["expert_params"] == 2 * one_layer
  assert nominal["total_params"] - nominal["active_params"] == 2 * one_layer * (1 - 2 / e)
  assert nominal["active_params"] - measured["active_params"] == pytest.approx(
      one_layer * (2 / e - 1 / e) + one_layer * (2 / e - 3 / e), abs=1)
  assert (nominal["flops_per_token"] - measured["flops_per_token"]
          == pytest.approx(2 * (nominal["active_params"] - measured["active_params"]), abs=2))


def test_attention_flops_follow_the_query_width_not_d_model():
  """QK^T and AV cost 2 * num_heads * head_dim per attended position; grouped-query attention
  shares keys and values but every query head still attends."""
  base = account(_run("model.num_experts=0"))
  wide = account(_run("model.num_experts=0", "model.head_dim=64"))     # 4 heads x 64 = 256
  gqa = account(_run("model.num_experts=0", "model.num_kv_heads=2"))
  weights = lambda a, b: 2 * (a["active_params"] - b["active_params"])
  assert wide["flops_per_token"] - base["flops_per_token"] - weights(wide, base) == (
      2 * LAYERS * SEQ_LEN * (4 * 64 - D_MODEL))
  assert gqa["flops_per_token"] - base["flops_per_token"] == weights(gqa, base)
  assert gqa["active_params"] < base["active_params"]
  # Latent attention: QK^T over 24 + 8 dims per head, AV over 16: (32 + 16) / 2 per head.
  mla = account(_run("model.num_experts=0", "model.attention=mla", "model.kv_lora_rank=32",
                     "model.qk_nope_head_dim=24", "model.qk_rope_head_dim=8",
                     "model.v_head_dim=16"))
  assert mla["flops_per_token"] - 2 * (mla["active_params"] - VOCAB * D_MODEL) == (
      2 * VOCAB * D_MODEL + 2 * LAYERS * SEQ_LEN * 4 * (24 + 8 + 16) / 2)


@pytest.mark.parametrize("config, positions", [("classify_digits.py", 17),
                                               ("classify_text.py", 257)])
def test_a_classifier_counts_the_positions_its_examples_fill(config, positions):
  """digits: 4x4 patches of 2x2 + CLS = 17 positions; text: 256 bytes + CLS. Not seq_len."""
  cfg = config_lib.load_file(REPO / "configs" / config)
  run = config_lib.validate(cfg, num_devices=1, overrides=[
      "mesh.data=1", "mesh.expert=1", "mesh.model=1"])
  assert run.positions == positions and run.data.seq_len == 128
  assert run.tokens_per_step == run.data.batch_size * positions
  import dataclasses
  m = run.model
  one = account(dataclasses.replace(run, positions=1))["flops_per_token"]
  # The attention term grows with the positions attended, bidirectionally (a = 2).
  assert account(run)["flops_per_token"] - one == \
      2 * m.num_layers * (positions - 1) * m.num_heads * m.head_size * 2
