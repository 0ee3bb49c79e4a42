"""The dispatcher registry and capabilities: a registered dispatcher is chosen by name, and what
it declares (drops tokens, soft routings, an expert-parallel version) decides how it is used."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax import dispatch, routing
from moe_jax.dispatch import expert_parallel, sort
from moe_jax.dispatch.base import Dispatcher
from moe_jax.layer import MoEConfig, init_moe_layer, moe_layer
from moe_jax.parallel import make_mesh


@pytest.fixture
def registry(monkeypatch):
  """A private copy of the registry, so a test's dispatchers do not outlive it."""
  monkeypatch.setattr(dispatch._DISPATCHERS, "_items", dict(dispatch._DISPATCHERS._items))


def test_builtin_capabilities():
  assert {"dropless", "einsum", "sort"} <= set(dispatch.names())
  assert dispatch.get("sort").drops_tokens and dispatch.get("einsum").drops_tokens
  assert not dispatch.get("dropless").drops_tokens
  assert dispatch.get("einsum").supports_soft and not dispatch.get("sort").supports_soft
  assert all(expert_parallel.is_available(dispatch.get(n)) for n in ("dropless", "einsum", "sort"))
  # sort and einsum are halves (one exchange serves both); dropless brings its own exchange
  assert dispatch.get("sort").pack and dispatch.get("einsum").pack
  assert dispatch.get("dropless").pack is None and dispatch.get("dropless").expert_parallel


def test_router_capabilities():
  flags = {n: (r.needs_token_ids, r.soft) for n in routing.names()
           for r in [routing.get(n, num_experts=8)]}
  assert flags["hash"] == (True, False)
  assert flags["soft"] == (False, True)
  assert {n for n, (ids, _) in flags.items() if ids} == {"hash"}
  assert {n for n, (_, soft) in flags.items() if soft} == {"soft"}


def test_register_refuses_a_taken_name_and_non_dispatchers(registry):
  with pytest.raises(ValueError, match="dispatcher 'sort' is already registered"):
    dispatch.register(Dispatcher("sort", sort.run, supports_soft=False))
  dispatch.register(dispatch.get("sort"))   # the same object again is harmless
  with pytest.raises(ValueError, match="takes a Dispatcher"):
    dispatch.register("sort")
  with pytest.raises(ValueError, match="unknown dispatcher 'nope'; allowed: dropless, einsum"):
    dispatch.get("nope")


def _layer(config, mesh=None):
  variables = init_moe_layer(jax.random.PRNGKey(0), 16, config)
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 16, 16))
  fn = jax.jit(lambda v, x: moe_layer(v, x, config, mesh=mesh)[0])
  return fn(variables, x), jax.jit(jax.grad(lambda v, x: jnp.sum(jnp.sin(fn(v, x)))))(
      variables, x)


def test_a_new_dispatcher_without_expert_parallel_runs_unsharded_and_is_refused_sharded(
    registry):
  # A user's dispatcher: the sort algorithm under a new name, declaring no expert-parallel form.
  dispatch.register(Dispatcher("my_sort", sort.run, supports_soft=False, drops_tokens=True))
  assert "my_sort" in dispatch.names()
  base = dict(num_experts=8, expert_d_ff=32, router_options={"k": 2}, capacity_factor=1.0)
  mine, reference = MoEConfig(dispatcher="my_sort", **base), MoEConfig(dispatcher="sort", **base)
  for got, want in zip(_layer(mine), _layer(reference)):
    jax.tree.map(np.testing.assert_array_equal, got, want)
  # Data-parallel needs no exchange, so it runs; splitting the experts needs one.
  for got, want in zip(_layer(mine, make_mesh(data=8)), _layer(reference)):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)
  with pytest.raises(ValueError, match="dispatcher 'my_sort' has no expert-parallel version"):
    _layer(mine, make_mesh(data=2, expert=4))


def test_a_new_dispatcher_made_of_halves_is_expert_parallel_with_no_more_code(registry):
  """pack/unpack are all a dispatcher needs for expert parallelism: the one exchange runs its
  own halves (here einsum's, which the former per-name factory replaced by sort's algorithm).
  Its results equal the unsharded layer's, drops included."""
  einsum = dispatch.get("einsum")
  dispatch.register(Dispatcher.from_halves("my_einsum", einsum.pack, einsum.unpack,
                                           supports_soft=False, drops_tokens=True))
  seen = []
  pack = lambda *a, **k: (seen.append("pack"), einsum.pack(*a, **k))[1]
  dispatch.register(Dispatcher.from_halves("spy", pack, einsum.unpack, supports_soft=False,
                                           drops_tokens=True))
  base = dict(num_experts=8, expert_d_ff=32, router_options={"k": 2}, capacity_factor=1.0)
  reference = _layer(MoEConfig(dispatcher="einsum", **base))
  for name in ("my_einsum", "spy"):
    got = _layer(MoEConfig(dispatcher=name, **base), make_mesh(data=2, expert=4))
    for g, w in zip(got, reference):
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g, w)
  assert seen   # the sharded layer called the dispatcher's own pack
