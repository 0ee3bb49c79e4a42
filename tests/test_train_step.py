"""The LM train step: the loss falls on real text; sharded steps equal unsharded steps."""
import jax
import numpy as np
from flax import nnx

from moe_jax.data import load_corpus, make_iterator
from moe_jax.models import DecoderLM, make_config
from moe_jax.parallel import make_mesh
from moe_jax.train_step import OptimConfig, learning_rate_schedule, make_optimizer
from tests.train_helpers import make_train_step

CONFIG = dict(vocab_size=256, d_model=32, num_layers=2, num_heads=2, d_ff=64, num_experts=4,
              router="bias_balanced", router_options={"k": 2, "bias_update_rate": 1e-2},
              max_len=32)
OPTIM = OptimConfig(learning_rate=3e-3, warmup_steps=5, total_steps=40)


def _train(config, mesh, steps, seed=0):
  model = DecoderLM(config, rngs=nnx.Rngs(seed), mesh=mesh)
  optimizer = nnx.Optimizer(model, make_optimizer(OPTIM), wrt=nnx.Param)
  step = make_train_step(aux_loss_weights={"load_balancing": 0.01},
                         schedule=learning_rate_schedule(OPTIM))
  batches = make_iterator(load_corpus("pydoc_topics", "train"), seq_len=32, batch_size=8,
                          seed=seed, shard_index=0, shard_count=1)
  history = []
  for i in range(steps):
    batch = {k: np.asarray(v) for k, v in next(batches).items()}
    history.append(jax.device_get(step(model, optimizer, batch, jax.random.PRNGKey(i))))
  return model, history


def test_loss_falls_on_the_embedded_corpus_and_router_state_moves():
  config = make_config(**CONFIG, dispatcher="dropless")
  model, history = _train(config, None, 40)
  first = np.mean([h["ce"] for h in history[:3]])
  last = np.mean([h["ce"] for h in history[-5:]])
  assert last < 0.75 * first, (first, last)       # ln 256 = 5.55 nats at the start
  assert {"loss", "ce", "aux/load_balancing", "grad_norm", "lr", "layer0/max_vio"} <= set(
      history[-1])
  bias = model.transformer.blocks[0].ffn.router_state["bias"][...]
  assert np.abs(np.asarray(bias)).sum() > 0       # written back by the train=True forward


def test_sharded_steps_equal_unsharded_steps():
  config = make_config(**CONFIG, dispatcher="sort", capacity_factor=1.0)
  _, plain = _train(config, None, 3)
  _, sharded = _train(config, make_mesh(data=2, expert=4), 3)
  for p, s in zip(plain, sharded):
    np.testing.assert_allclose(s["loss"], p["loss"], rtol=2e-5)
    np.testing.assert_allclose(s["grad_norm"], p["grad_norm"], rtol=1e-4)
  assert plain[0]["layer0/dropped_fraction"] > 0   # capacity 1.0 drops: the same on both
