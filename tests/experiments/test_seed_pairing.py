"""Seed pairing: the sweeps' statistics (experiments/stats.py) pair the points' results by seed,
which is only valid if one seed gives, at every point of a sweep,
  (a) the same training batches in the same order, whatever the model, and
  (b) the same initial values of every parameter the points share (embeddings, attention,
      norms, the FFNs dense in both models, the output head): adding experts or changing the
      router must not shift the random streams of the shared parameters.
Checked on the sweeps' real --quick base configs, built as a run builds them (no training).
"""
import functools

import jax
import numpy as np
import pytest
from flax import nnx

from experiments import bases
from experiments.sweep import override_flags, point
from moe_jax import config as config_lib, run_setup
from moe_jax.parallel.mesh import make_mesh

BASES = {"lm": bases.lm, "lm_protocol": bases.lm_protocol}
POINTS = {
    "dense": {"model.num_experts": 0},
    "E8": {"model.num_experts": 8},
    "E8-bias_balanced-k2": {"model.num_experts": 8, "model.router": "bias_balanced",
                            "model.router_options": {"k": 2}},
    "E16-dropless": {"model.num_experts": 16, "model.dispatcher": "dropless"},
}
SEEDS = (0, 1)
NUM_BATCHES = 3
ONE_DEVICE = ["mesh.data=1", "mesh.expert=1", "mesh.model=1"]


@functools.cache
def _run(base: str, name: str, seed: int):
  """The validated run config of (point, seed) as the sweep harness trains it, on one device."""
  flags = override_flags(point({}, POINTS[name], name=name), seed)
  return config_lib.validate(BASES[base](quick=True), num_devices=1,
                             overrides=[*flags, *ONE_DEVICE])


@functools.cache
def _batches(base: str, name: str, seed: int) -> tuple:
  run = _run(base, name, seed)
  iterator = run_setup.train_iterator(run, run_setup.tokenizer(run, None, may_train=False))
  return tuple({k: np.asarray(v) for k, v in next(iterator).items()}
               for _ in range(NUM_BATCHES))


@functools.cache
def _params(base: str, name: str, seed: int) -> dict:
  """{path: initial value} of every nnx.Param of the point's freshly built model."""
  run = _run(base, name, seed)
  mesh = make_mesh(data=1, expert=1, model=1, devices=jax.devices()[:1])
  model, _ = run_setup.build(run, mesh)
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  return {"/".join(map(str, path)): np.asarray(jax.device_get(v.get_value()))
          for path, v in flat}


def _shared(a: dict, b: dict) -> list[str]:
  return sorted(k for k in a.keys() & b.keys() if a[k].shape == b[k].shape)


def _differing(base: str, name_a: str, name_b: str, seed: int) -> list[str]:
  a, b = _params(base, name_a, seed), _params(base, name_b, seed)
  return [k for k in _shared(a, b) if not np.array_equal(a[k], b[k])]


PAIRS = [(a, b) for i, a in enumerate(POINTS) for b in list(POINTS)[i + 1:]]
DENSE_PAIRS = [p for p in PAIRS if "dense" in p]
MOE_PAIRS = [p for p in PAIRS if "dense" not in p]


@pytest.mark.parametrize("base", BASES)
def test_same_seed_same_batches_at_every_point(base):
  for seed in SEEDS:
    ref = _batches(base, "dense", seed)
    assert ref[0]["inputs"].shape == (8, 32)
    for name in POINTS:
      got = _batches(base, name, seed)
      for i, (x, y) in enumerate(zip(ref, got)):
        assert x.keys() == y.keys(), (name, seed, i)
        for k in x:
          np.testing.assert_array_equal(x[k], y[k], err_msg=f"{name} seed {seed} batch {i} {k}")
  a, b = _batches(base, "dense", 0), _batches(base, "dense", 1)
  assert not all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, b)), \
      "seeds 0 and 1 give the same batches"


@pytest.mark.parametrize("base", BASES)
def test_different_seeds_give_different_params(base):
  for name in POINTS:
    p0, p1 = _params(base, name, 0), _params(base, name, 1)
    random_leaves = [k for k in p0 if np.unique(p0[k]).size > 1]   # not the ones-init norms
    assert random_leaves, name
    same = [k for k in random_leaves if np.array_equal(p0[k], p1[k])]
    assert not same, f"{name}: seeds 0 and 1 give the same {same}"


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("pair", MOE_PAIRS, ids="-vs-".join)
def test_moe_points_share_initial_params(base, pair):
  """Changing the number of experts, the router or the dispatcher keeps every shared leaf."""
  shared = _shared(_params(base, pair[0], 0), _params(base, pair[1], 0))
  assert any(k.startswith("transformer/embed") for k in shared), shared
  assert any("blocks/3/attn" in k for k in shared), shared
  for seed in SEEDS:
    assert _differing(base, *pair, seed) == [], (pair, seed)


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("pair", DENSE_PAIRS, ids="-vs-".join)
def test_dense_and_moe_points_share_initial_params(base, pair):
  for seed in SEEDS:
    assert _differing(base, *pair, seed) == [], (pair, seed)
