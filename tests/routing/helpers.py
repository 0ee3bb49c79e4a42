"""Shared inputs for router tests."""
import jax
import jax.numpy as jnp

D_MODEL = 16
NUM_EXPERTS = 8


def make_router(name, num_experts=NUM_EXPERTS, **options):
  from moe_jax import routing
  return routing.get(name, num_experts=num_experts, **options)


def tokens(num_tokens, d_model=D_MODEL, seed=0, dtype=jnp.float32):
  x = jax.random.normal(jax.random.PRNGKey(seed), (num_tokens, d_model), jnp.float32)
  return x.astype(dtype)


def token_ids(num_tokens, vocab=1000, seed=1):
  return jax.random.randint(jax.random.PRNGKey(seed), (num_tokens,), 0, vocab)


def route(router, variables, x, *, train=False, seed=2, jit=False):
  fn = lambda v, x, ids, rng: router.route(v, x, token_ids=ids, rng=rng, train=train)
  if jit:
    fn = jax.jit(fn)
  return fn(variables, x, token_ids(x.shape[0]), jax.random.PRNGKey(seed))


def skewed_tokens(num_tokens, w_DE, favoured=0, strength=3.0, seed=0):
  """Tokens whose logits strongly favour one expert: a plain top-k router is badly unbalanced."""
  direction = w_DE[:, favoured] / jnp.linalg.norm(w_DE[:, favoured])
  return tokens(num_tokens, w_DE.shape[0], seed) + strength * direction
