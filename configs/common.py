"""What the shipped configs share (big_vision style): each config file starts from one of these
and sets only what it changes. Loaded by `import common` (moe_jax.config.load_file makes a
config's own directory importable while it loads).

Fields no config sets keep the defaults of the schema in moe_jax/config.py (tests/test_config.py
checks that nothing here restates one), and every field, set here or not, can be overridden on
the command line: --config.model.dtype=bfloat16. Aux-loss
weights are not set here: each router declares the weights of the losses it owns (topk: Switch's
load balancing 1e-2 and ST-MoE's z-loss 1e-3; relu: its L1 at 1; ...), and
--config.aux_loss_weights.NAME=w overrides one.
"""
import ml_collections


def base(*, steps: int) -> ml_collections.ConfigDict:
  """Training loop, optimizer and checkpoint settings every run shares."""
  c = ml_collections.ConfigDict()
  c.steps = steps
  c.model = dict(router_options={"k": 2})   # top-2 (GShard, Mixtral); the router is topk
  c.optim = dict()
  c.checkpoint = dict()
  c.mesh = dict(data=2, expert=4)            # 8 (simulated) devices, 2 experts' worth each
  return c


def byte_lm(*, steps: int, corpus: str) -> ml_collections.ConfigDict:
  """A byte-level MoE language model on `corpus`."""
  c = base(steps=steps)
  c.task = "lm"
  c.data = dict(corpus=corpus)               # byte-level: the schema's tokenizer
  c.eval = dict()
  return c


def accelerator_lm(*, steps: int, corpus: str) -> ml_collections.ConfigDict:
  """The large-model recipe for GPUs and TPUs: SwiGLU experts in every other layer after a
  dense first layer, bfloat16 compute over float32 params, remat per block, async saves."""
  c = byte_lm(steps=steps, corpus=corpus)
  c.model.update(activation="silu", glu=True, moe_every=2, first_dense_layers=1,
                 tie_embeddings=False, dtype="bfloat16", remat=True)   # params stay float32
  c.checkpoint.update(async_save=True)
  c.eval.update(prompt="def ", sample_tokens=500)
  return c


def classifier(*, steps: int, dataset: str) -> ml_collections.ConfigDict:
  """An MoE encoder classifier on `dataset`."""
  c = base(steps=steps)
  c.task = "classification"
  c.data = dict(dataset=dataset)
  c.optim.update(weight_decay=0.05)
  return c
