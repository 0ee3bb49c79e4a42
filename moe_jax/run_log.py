"""What a run writes as it goes: metrics.jsonl, TensorBoard events, a progress bar.

    log = RunLog(workdir, start_step=restored_step, total_steps=run.steps)
    log.write(step, {"loss": 2.1, "layer0/expert_load": [0.12, ...]})
    log.close()

`metrics.jsonl` holds one JSON object per logged step ({"step": s, ...}; arrays as lists).
On resume from step s, lines for later steps (logged after the checkpoint, before the crash)
are moved to `metrics.abandoned.jsonl` and the file is rewritten atomically, so metrics.jsonl
always reads as one uninterrupted run; TensorBoard is told the same with `purge_step`. Only
process 0 writes.

A torn last line (the process died while writing it) is ignored by `read_metrics` and moved to
`metrics.abandoned.jsonl` on resume, with a note; a corrupt line anywhere else is an error naming
the file and the line. A write that fails (a full disk) is an OSError naming the file or the
TensorBoard directory: TensorBoard events are written in the calling thread (not from
tensorboardX's writer thread, which died on a full disk and left the training loop blocked in its
queue forever).
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import struct
import sys
import time

import numpy as np

METRICS_FILE = "metrics.jsonl"


def _parse(path: pathlib.Path) -> tuple[list[tuple[str, dict]], str | None, bool]:
  """(the complete lines with their records, a torn last line or None, whether the file ends in
  a newline). A line that does not parse, other than an unterminated last one, is a ValueError
  naming the file and the line."""
  text = path.read_bytes().decode("utf-8", errors="surrogateescape")
  lines = text.split("\n")
  tail = lines.pop()            # "" when the file ends in a newline
  parsed, torn = [], None
  for number, line in enumerate(lines + [tail], 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise ValueError("not a record with a step")
    except ValueError as e:
      if number == len(lines) + 1:   # unterminated: the write was cut short
        torn = line
        continue
      reason = f"{e.msg}: column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
      raise ValueError(f"{path}, line {number}, is corrupt ({reason}); remove or repair that "
                       "line, then rerun") from None
    parsed.append((line, record))
  return parsed, torn, not tail


def read_metrics(workdir) -> list[dict]:
  """The records of `workdir`'s metrics.jsonl (a torn last line left out)."""
  path = pathlib.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return [record for _, record in _parse(path)[0]]


def _jsonable(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


def _truncate(workdir: pathlib.Path, start_step: int) -> str | None:
  """Moves the lines after `start_step` and a torn last line to metrics.abandoned.jsonl;
  returns a note on the torn line, if there was one."""
  path = workdir / METRICS_FILE
  if not path.exists():
    return None
  parsed, torn, terminated = _parse(path)
  keep = [line for line, record in parsed if record["step"] <= start_step]
  dropped = [line for line, record in parsed if record["step"] > start_step]
  dropped += [torn] if torn is not None else []
  if not dropped and terminated:
    return None
  abandoned = workdir / "metrics.abandoned.jsonl"
  if dropped:
    with open(abandoned, "a", encoding="utf-8", errors="surrogateescape") as f:
      f.write("\n".join(dropped) + "\n")
  tmp = path.with_suffix(".jsonl.tmp")
  tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8",
                 errors="surrogateescape")
  os.replace(tmp, path)
  if torn is None:
    return None
  return (f"note: the last line of {path} was cut short (the run that wrote it was stopped "
          f"while writing it); moved to {abandoned}")


class _Events:
  """TensorBoard scalars in an events file (the name, records and purge_step marker
  tensorboardX's SummaryWriter writes), written and flushed in the calling thread."""

  def __init__(self, directory: pathlib.Path, purge_step: int):
    from tensorboardX.proto.event_pb2 import Event, SessionLog
    self.directory, self._file, self._failed = directory, None, False
    with self._reporting():
      directory.mkdir(parents=True, exist_ok=True)
      name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
      self._file = open(directory / name, "ab")
      self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))
      # TensorBoard drops what an earlier start logged from purge_step on.
      self._write(Event(wall_time=time.time(), step=purge_step,
                        session_log=SessionLog(status=SessionLog.START)))
      self._file.flush()

  @contextlib.contextmanager
  def _reporting(self):
    try:
      yield
    except OSError as e:
      self._failed = True
      raise OSError(e.errno, f"could not write TensorBoard events to {self.directory} "
                    f"({e.strerror or e}); the checkpoints already saved are intact: free "
                    "space, then rerun the same command to resume") from e

  def _write(self, event) -> None:
    from tensorboardX.record_writer import masked_crc32c
    data = event.SerializeToString()
    header = struct.pack("Q", len(data))
    self._file.write(header + struct.pack("I", masked_crc32c(header)) + data
                     + struct.pack("I", masked_crc32c(data)))

  def scalars(self, step: int, values: dict) -> None:
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.summary import scalar
    now = time.time()
    with self._reporting():
      for name, value in values.items():
        self._write(Event(wall_time=now, step=int(step), summary=scalar(name, value)))
      self._file.flush()

  def close(self) -> None:
    if self._file is None or self._file.closed:
      return
    if self._failed:                 # already reported; what is left in the buffer is lost
      with contextlib.suppress(OSError):
        self._file.close()
      return
    with self._reporting():
      self._file.flush()
      os.fsync(self._file.fileno())
      self._file.close()


class RunLog:
  def __init__(self, workdir, *, start_step: int, total_steps: int, enabled: bool = True,
               progress: bool = True, tensorboard: bool = True):
    self.workdir = pathlib.Path(workdir)
    self.enabled = enabled
    self._tb = self._bar = self._file = None
    if not enabled:
      return
    note = _truncate(self.workdir, start_step)
    self._file = open(self.workdir / METRICS_FILE, "a")
    if tensorboard:
      self._tb = _Events(self.workdir / "tensorboard", purge_step=start_step + 1)
    if progress:
      from tqdm import tqdm
      self._bar = tqdm(total=total_steps, initial=start_step, unit="step", file=sys.stderr,
                       dynamic_ncols=True, mininterval=1.0)
    if note:
      self.message(note)

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
      self._tb.scalars(step, {name: value for name, value in record.items()
                              if name != "step" and np.ndim(value) == 0})

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
    """Closes everything; raises the first error (a full disk on the last flush)."""
    errors = []
    for thing in (self._bar, self._tb, self._file):
      if thing is not None:
        try:
          thing.close()
        except OSError as e:
          errors.append(e)
    if errors:
      raise errors[0]
