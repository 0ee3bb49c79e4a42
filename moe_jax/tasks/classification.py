"""Task `classification`: texts (tokens) or images (patches) into classes, reported in accuracy.

Batches: inputs (int32 tokens [B, L] or float32 images [B, H, W, C]), labels int32 [B], mask
[B] of real examples (evaluation pads the last batch), and `token_mask` [B, L] for padded
texts, which attention and pooling respect.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from moe_jax.data import datasets
from moe_jax.data.classification import eval_example_batches
from moe_jax.models import EncoderClassifier
from moe_jax.parallel.distributed import host_local_to_global
from moe_jax.tasks.base import Section, Task, TaskData, TaskEval
from moe_jax.tasks.registry import register
from moe_jax.validation import check_choice, check_int


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """`config.classifier.*`: how the encoder reads an example and pools it."""
  pool: str = "mean"                   # 'mean' or 'cls'
  patch_size: int = 2                  # image datasets: p x p patches


def check_options(classifier: ClassifierConfig) -> ClassifierConfig:
  check_choice("pool", classifier.pool, ("mean", "cls"), owner="config.classifier")
  check_int("patch_size", classifier.patch_size, low=1, owner="config.classifier")
  return classifier


SECTION = Section("classifier", ClassifierConfig, check_options)


def check_data(data, model, options) -> int:
  classifier = options["classifier"]
  check_choice("dataset", data.dataset, datasets.classification_names(), owner="config.data")
  if data.dataset == "stdlib_package" and data.tokenizer != "byte":
    raise ValueError("config.data.tokenizer: the 'stdlib_package' snippets are byte tokens; "
                     "use tokenizer='byte'")
  kind, _, shape = datasets.classification_info(data)
  patch = classifier.patch_size
  if kind == "image" and (shape[0] % patch or shape[1] % patch):
    raise ValueError(f"config.classifier.patch_size={patch} does not divide the "
                     f"{shape[0]}x{shape[1]} images of {data.dataset!r}")
  length = (shape[0] // patch) * (shape[1] // patch) if kind == "image" else shape[0]
  length += classifier.pool == "cls"
  if length > model.max_len:
    raise ValueError(f"config.model.max_len={model.max_len} is shorter than the {length} "
                     f"positions of one {data.dataset!r} example")
  return length


def build_model(run, mesh, rngs):
  kind, num_classes, shape = datasets.classification_info(run.data)
  classifier = run.options["classifier"]
  images = (dict(patch_size=classifier.patch_size, image_shape=shape)
            if kind == "image" else {})
  return EncoderClassifier(run.model, num_classes=num_classes, pool=classifier.pool,
                           rngs=rngs, mesh=mesh, **images)


def train_iterator(run, tokenizer, **shard):
  return datasets.classification_train_iterator(run.data, tokenizer, **shard)


def validation_data(run, tokenizer) -> dict[str, np.ndarray]:
  return datasets.classification_validation(run.data, tokenizer)


def eval_batches(run, tokenizer, data, **shard):
  del run, tokenizer
  return eval_example_batches(data, **shard)


def _logits(model, batch, *, train, rngs=None):
  return model(batch["inputs"], train=train, rngs=rngs, mask_BL=batch.get("token_mask"))


def loss(model, batch, *, train, rngs=None):
  logits_BC, routings = _logits(model, batch, train=train, rngs=rngs)
  ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits_BC, batch["labels"]))
  accuracy = jnp.mean((jnp.argmax(logits_BC, axis=-1) == batch["labels"]).astype(jnp.float32))
  return ce, {"ce": ce, "accuracy": accuracy}, routings


def eval_sums(model, batch):
  logits_BC, routings = _logits(model, batch, train=False)
  labels_B, mask_B = batch["labels"], batch["mask"]
  nll_B = optax.softmax_cross_entropy_with_integer_labels(logits_BC, labels_B)
  predicted_B = jnp.argmax(logits_BC, axis=-1)
  classes = logits_BC.shape[-1]
  return {"nll_sum": jnp.sum(nll_B * mask_B), "count": jnp.sum(mask_B),
          "correct": jnp.sum((predicted_B == labels_B) * mask_B),
          "confusion": jnp.einsum("b,bi,bj->ij", mask_B, jax.nn.one_hot(labels_B, classes),
                                  jax.nn.one_hot(predicted_B, classes))}, routings


def summarize(sums: dict) -> dict:
  confusion = sums["confusion"]   # rows: true class
  return {"loss": float(sums["nll_sum"] / sums["count"]), "examples": int(sums["count"]),
          "accuracy": float(sums["correct"] / sums["count"]),
          "per_class_accuracy": np.diag(confusion) / np.maximum(confusion.sum(1), 1),
          "confusion": confusion.astype(int)}


def headline(metrics: dict) -> str:
  return f"accuracy {metrics['accuracy']:.4f}"


def per_class_expert_load(eval_step, state, run, mesh, val: dict[str, np.ndarray],
                          num_classes: int) -> np.ndarray | None:
  """[classes, MoE layers, E]: each layer's expert load over the validation examples of one
  class alone (its batches are filled by repeating that class's examples), i.e. which experts
  each class uses. None for a model without MoE layers. `val`: the validation arrays."""
  batch_size = run.data.eval_batch_size
  processes, index = jax.process_count(), jax.process_index()
  local = slice(index * batch_size // processes, (index + 1) * batch_size // processes)
  per_class = []
  for c in range(num_classes):
    ids = np.flatnonzero(val["labels"] == c)
    loads = []
    for start in range(0, len(ids), batch_size):
      rows = np.resize(ids[start:start + batch_size], batch_size)[local]
      batch = {k: v[rows] for k, v in val.items()}
      batch["mask"] = np.ones(len(rows), np.float32)
      out = jax.device_get(eval_step(state, host_local_to_global(batch, mesh)))
      keys = sorted((k for k in out if k.endswith("/expert_load")),
                    key=lambda k: int(k.split("/")[0][5:]))
      if not keys:
        return None
      loads.append(np.stack([np.asarray(out[k]) for k in keys]))
    per_class.append(np.mean(loads, axis=0))
  return np.stack(per_class)


def evaluate_extras(ctx) -> dict:
  names = list(datasets.class_names(ctx.run.data))
  return {"class_names": names,
          "baselines": datasets.classification_baselines(ctx.run.data, ctx.data),
          "class_expert_load": per_class_expert_load(ctx.eval_step, ctx.state, ctx.run,
                                                     ctx.mesh, ctx.data, len(names))}


def report(result: dict, workdir) -> str:
  per_class = ", ".join(f"{n} {a:.2f}" for n, a in zip(result["class_names"],
                                                      result["per_class_accuracy"]))
  return "\n".join([
      f"step {result['step']}: validation accuracy {result['accuracy']:.4f} on "
      f"{result['examples']} examples (loss {result['loss']:.4f})",
      "baselines: " + ", ".join(f"{name} {value:.4f}"
                                for name, value in result["baselines"].items()),
      f"per class: {per_class}"])


def plots(result: dict, workdir, records) -> list[str]:
  from moe_jax import plots as plot_lib   # matplotlib: only when plotting (0.5 s per CLI start)
  step = result["step"]
  plot_lib.loss_curve(records, workdir / "loss_curve.png", bits_per_byte=False)
  plot_lib.confusion_matrix(result["confusion"], result["class_names"],
                            workdir / "confusion.png",
                            title=f"validation, step {step}: accuracy {result['accuracy']:.3f}")
  written = ["loss_curve.png", "confusion.png"]
  if result.get("class_expert_load") is not None:
    layers = sorted(int(i) for i in result.get("layers", {}))
    plot_lib.class_expert_load(result["class_expert_load"], result["class_names"], layers,
                               workdir / "class_expert_load.png",
                               title=f"which experts each class uses (validation, step {step})")
    written.append("class_expert_load.png")
  return written


TASK = register(Task(
    name="classification", causal=False,
    data=TaskData(check_data, lambda data: data.dataset, train_iterator, validation_data,
                  eval_batches),
    build_model=build_model, loss=loss,
    eval=TaskEval(eval_sums, summarize, headline, evaluate_extras, report, plots),
    sections=(SECTION,)))
