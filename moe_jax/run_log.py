"""What a run writes as it goes: metrics.jsonl, TensorBoard events, a progress bar.

    log = RunLog(workdir, start_step=restored_step, total_steps=run.steps)
    log.write(step, {"loss": 2.1, "layer0/expert_load": [0.12, ...]})
    log.close()

`metrics.jsonl` holds one JSON object per logged step ({"step": s, ...}; arrays as lists).
On resume from step s, lines for later steps (logged after the checkpoint, before the crash)
are moved to `metrics.abandoned.jsonl` and the file is rewritten atomically, so metrics.jsonl
always reads as one uninterrupted run; TensorBoard is told the same with `purge_step`. Only
process 0 writes.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys

import numpy as np

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _jsonable(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


def _truncate(workdir: pathlib.Path, start_step: int) -> None:
  path = workdir / METRICS_FILE
  if not path.exists():
    return
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  steps = [json.loads(line)["step"] for line in lines]
  keep = [line for line, step in zip(lines, steps) if step <= start_step]
  dropped = [line for line, step in zip(lines, steps) if step > start_step]
  if not dropped:
    return
  with open(workdir / "metrics.abandoned.jsonl", "a") as f:
    f.write("\n".join(dropped) + "\n")
  tmp = path.with_suffix(".jsonl.tmp")
  tmp.write_text("".join(line + "\n" for line in keep))
  os.replace(tmp, path)


class RunLog:
  def __init__(self, workdir, *, start_step: int, total_steps: int, enabled: bool = True,
               progress: bool = True, tensorboard: bool = True):
    self.workdir = pathlib.Path(workdir)
    self.enabled = enabled
    self._tb = self._bar = self._file = None
    if not enabled:
      return
    _truncate(self.workdir, start_step)
    self._file = open(self.workdir / METRICS_FILE, "a")
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=start_step + 1)
    if progress:
      from tqdm import tqdm
      self._bar = tqdm(total=total_steps, initial=start_step, unit="step", file=sys.stderr,
                       dynamic_ncols=True, mininterval=1.0)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
    try:
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()
    except OSError as e:
      raise OSError(e.errno, f"could not write {self.workdir / METRICS_FILE} "
                    f"({e.strerror}); the checkpoints already saved are intact: free space, "
                    "then rerun the same command to resume") from e
    if self._tb is not None:
      for name, value in record.items():
        if name != "step" and np.ndim(value) == 0:
          self._tb.add_scalar(name, value, step)

  def progress(self, step: int, **postfix) -> None:
    if self._bar is not None:
      self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
      self._bar.update(step - self._bar.n)

  def message(self, text: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(text, file=sys.stderr)
    else:
      print(text, file=sys.stderr, flush=True)

  def close(self) -> None:
    for thing in (self._bar, self._tb, self._file):
      if thing is not None:
        thing.close()
