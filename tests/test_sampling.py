"""Sampling from a trained LM: every router the decoder accepts can be sampled from."""
import pytest
from flax import nnx

from moe_jax import config as config_lib
from moe_jax import sampling
from moe_jax.data.tokenizer import ByteTokenizer
from moe_jax.models import DecoderLM
from tests.train_helpers import small_config


def _run(*overrides):
  cfg = small_config()
  cfg.mesh.update(data=1, expert=1)
  return config_lib.validate(cfg, num_devices=1, overrides=overrides)


@pytest.mark.parametrize("overrides, dispatcher", [
    ((), "dropless"),
    # Soft MoE has no token -> expert list, so the dropless dispatcher cannot run it: sampling
    # keeps the einsum dispatcher the run trained with (the run was an evaluate-time crash).
    (("model.router=soft", "model.dispatcher=einsum", "model.allow_non_causal_router=True"),
     "einsum"),
])
def test_sample_runs_on_a_dispatcher_the_router_supports(overrides, dispatcher):
  run = _run(*overrides)
  assert sampling.sampling_model_config(run.model).moe.dispatcher == dispatcher
  state = sampling.global_to_host(nnx.state(DecoderLM(run.model, rngs=nnx.Rngs(0))))
  text = sampling.sample(run, state, "def ", num_tokens=4, temperature=0.0, top_k=0,
                         tokenizer=ByteTokenizer())
  assert isinstance(text, str)
