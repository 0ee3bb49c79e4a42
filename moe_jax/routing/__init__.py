"""Gating functions behind one interface.

    router = moe_jax.routing.get("topk", num_experts=8, k=2)
    variables = router.init(rng, d_model)          # {'params': ..., 'state': ...}
    routing = router.route(variables, x_TD, train=True, rng=rng)   # -> Routing

Importing this package registers every built-in router; `register(name)` adds your own.
"""
from moe_jax.routing import losses
from moe_jax.routing.base import (Router, Routing, assignment_metrics, soft_metrics,
                                  sparse_routing, token_choice_routing)
from moe_jax.routing.registry import get, names, options, register
from moe_jax.routing.wrappers import with_input_jitter

# Built-in routers register themselves on import.
from moe_jax.routing import (cluster, deepseek, dense, expert_choice, hashing, relu,  # noqa: E402,F401
                             sinkhorn, soft, topk)

__all__ = ["Router", "Routing", "assignment_metrics", "get", "losses", "names", "options",
           "register", "soft_metrics", "sparse_routing", "token_choice_routing",
           "with_input_jitter"]
