"""The registered dispatchers the layer tests run, chosen by capability, never by name: a
dispatcher registered in moe_jax/dispatch/__init__.py joins every test below with no edit."""
from moe_jax import dispatch
from moe_jax.dispatch import expert_parallel


def every() -> list[str]:
  return dispatch.names()


def dropping() -> list[str]:
  """Those with a capacity (drop options and capacity tests)."""
  return [n for n in dispatch.names() if dispatch.get(n).drops_tokens]


def parallel() -> list[str]:
  """Those with an expert-parallel version (sharded == unsharded tests)."""
  return [n for n in dispatch.names() if expert_parallel.is_available(dispatch.get(n))]
