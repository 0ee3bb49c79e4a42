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
               unigram_bits: float | None = None) -> None:
  """Training and validation loss in bits per byte against step, from metrics.jsonl records."""
  to_bits = 1.0 / math.log(2)
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
  ax.set_ylabel("bits per byte")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
