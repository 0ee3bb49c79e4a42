"""Plots a researcher would rather look at than read: expert load by layer, loss curves."""
from __future__ import annotations

import math
import pathlib

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def expert_load_heatmap(load_LE, layers, path: pathlib.Path, *, title: str) -> None:
  """Fraction of assignments per expert (columns) in each MoE layer (rows); 1/E is balanced."""
  load_LE = np.asarray(load_LE, np.float64)
  num_layers, num_experts = load_LE.shape
  fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * num_experts + 2), 0.5 * num_layers + 1.6))
  image = ax.imshow(load_LE * num_experts, cmap="viridis", aspect="auto", vmin=0.0)
  ax.set_xticks(range(num_experts))
  ax.set_yticks(range(num_layers), [f"layer {i}" for i in layers])
  ax.set_xlabel("expert")
  if num_experts <= 16:
    for (i, j), value in np.ndenumerate(load_LE * num_experts):
      ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
              color="white" if value < 0.7 * image.get_clim()[1] else "black")
  fig.colorbar(image, ax=ax, label="load x E (1 = balanced)")
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def loss_curve(records: list[dict], path: pathlib.Path, *,
               unigram_bits: float | None = None, bits_per_byte: bool = True) -> None:
  """Training and validation loss against step, from metrics.jsonl records: in bits per byte
  for byte-level LMs, else cross-entropy in nats."""
  to_bits = 1.0 / math.log(2) if bits_per_byte else 1.0
  train = [(r["step"], r["ce"] * to_bits) for r in records if "ce" in r]
  val = [(r["step"], r["eval/loss"] * to_bits) for r in records if "eval/loss" in r]
  fig, ax = plt.subplots(figsize=(6, 4))
  if train:
    ax.plot(*zip(*train), label="train (cross-entropy)", lw=1)
  if val:
    ax.plot(*zip(*val), "o-", label="validation", ms=4)
  if unigram_bits is not None:
    ax.axhline(unigram_bits, color="gray", ls="--", lw=1, label="unigram entropy")
  ax.set_xlabel("step")
  ax.set_ylabel("bits per byte" if bits_per_byte else "cross-entropy (nats)")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def confusion_matrix(confusion_CC, class_names, path: pathlib.Path, *, title: str) -> None:
  """Rows: true class, columns: predicted class; cells: fraction of the true class."""
  confusion = np.asarray(confusion_CC, np.float64)
  rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
  n = len(class_names)
  fig, ax = plt.subplots(figsize=(0.55 * n + 2.5, 0.55 * n + 1.8))
  image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
  ax.set_xticks(range(n), class_names, rotation=60, ha="right")
  ax.set_yticks(range(n), class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  for (i, j), count in np.ndenumerate(confusion):
    if count:
      ax.text(j, i, int(count), ha="center", va="center", fontsize=7,
              color="white" if rates[i, j] > 0.5 else "black")
  fig.colorbar(image, ax=ax, label="fraction of true class")
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def class_expert_load(load_CLE, class_names, layers, path: pathlib.Path, *, title: str) -> None:
  """Which experts each class uses: one panel per MoE layer, rows classes, columns experts,
  load x E (1 = the class spreads evenly over the experts)."""
  load = np.asarray(load_CLE, np.float64)
  num_classes, num_layers, num_experts = load.shape
  fig, axes = plt.subplots(1, num_layers, squeeze=False,
                           figsize=(num_layers * (0.4 * num_experts + 2.2),
                                    0.4 * num_classes + 1.8))
  vmax = float((load * num_experts).max())
  for panel, (ax, layer) in enumerate(zip(axes[0], layers)):
    image = ax.imshow(load[:, panel] * num_experts, cmap="magma", vmin=0.0, vmax=vmax,
                      aspect="auto")
    ax.set_xticks(range(num_experts))
    ax.set_yticks(range(num_classes), class_names if panel == 0 else [])
    ax.set_xlabel("expert")
    ax.set_title(f"layer {layer}")
  fig.colorbar(image, ax=axes[0].tolist(), label="load x E")
  fig.suptitle(title)
  fig.savefig(path, dpi=120)
  plt.close(fig)
