"""Orbax checkpoints of a training run: model + optimizer state, data-iterator state, metadata.

    ckpts = Checkpoints(workdir / "checkpoints", keep=3)
    ckpts.save(step, state, data_iterator, meta={"model": ..., "rng": ...})
    state, meta = ckpts.restore(step, abstract_state, data_iterator)   # sets the iterator too

One checkpoint is one directory `<step>/` with three items: `state` (the nnx.State of the model
and optimizer: params, router state, Adam moments, the optimizer's step count; sharded arrays
are written by every process, Orbax's OCDBT format), `data` (the grain iterator position, one
JSON file per process) and `meta` (JSON: the model config it was trained with, the base RNG
key, the step). Orbax writes into a temporary directory and renames it when complete, so a
process killed mid-save leaves the previous checkpoints intact and no half-written step is
ever listed.

A checkpoint that cannot be read (files missing or corrupt) or that belongs to another model
raises `CheckpointError` naming the directory, the steps that exist, and how to fall back to an
older one (`--config.restore_step=N`). Falling back never deletes anything: newer steps are
moved to `<workdir>/abandoned_checkpoints/`.
"""
from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import shutil
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be restored (corrupt, incomplete, from another config) or
  saved. `retry_flags`: command-line flags that get past it (e.g. an older restore_step),
  which the CLI appends to the user's own command in its message."""

  def __init__(self, message: str, retry_flags: tuple[str, ...] = ()):
    super().__init__(message)
    self.retry_flags = tuple(retry_flags)


def short_reason(error: BaseException, limit: int = 200) -> str:
  """One line on why an Orbax / TensorStore call failed: the OS error if there is one in the
  chain (disk full, read-only), else the first line of the message without the TensorStore
  spec (a JSON blob of several lines) that such messages embed."""
  seen, e = set(), error
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.strerror:
      return f"{e.strerror}" + (f": {e.filename}" if e.filename else "")
    e = e.__cause__ or e.__context__
  text = str(error)
  for code in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EIO):
    if os.strerror(code) in text:   # TensorStore wraps the OS error in its own message
      return os.strerror(code)
  for marker in ("[tensorstore_spec", "tensorstore_spec", "{", "See full TensorStore details",
                 " index: ("):
    text = text.split(marker)[0]
  text = " ".join(text.split()).rstrip(" :;,[")
  text = text if len(text) <= limit else text[:limit] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def with_defaults(saved, defaults):
  """`saved` with the keys it lacks taken from `defaults`, recursively through dicts (a
  non-dict, e.g. a dense model's moe=None, stays as saved)."""
  if not isinstance(saved, dict) or not isinstance(defaults, dict):
    return saved
  return {**{k: v for k, v in defaults.items() if k not in saved},
          **{k: with_defaults(v, defaults.get(k)) for k, v in saved.items()}}


class Checkpoints:
  """The checkpoints in one directory; `keep` newest are kept."""

  def __init__(self, directory, *, keep: int = 3, async_save: bool = False,
               read_only: bool = False):
    self.directory = pathlib.Path(directory).absolute()
    # cleanup_tmp_directories: a save cut short by a kill leaves a temporary directory that
    # is never listed as a step; the resumed run removes it. A reader (evaluate) must not: the
    # temporary directory may be a save in progress.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                           cleanup_tmp_directories=not read_only,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step: int, state, data_iterator, meta: dict[str, Any]) -> None:
    try:
      with _quiet_stderr_on_failure():
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            meta=ocp.args.JsonSave(meta)))
    except Exception as e:  # noqa: BLE001 - disk full, read-only, ...: one readable reason
      raise self._save_error(step, e) from e

  def _save_error(self, step: int, cause: BaseException) -> CheckpointError:
    kept = [s for s in self.steps() if s != step]
    return CheckpointError(
        f"could not save checkpoint step {step} in {self.directory} ({short_reason(cause)}); "
        f"the checkpoints already there ({kept or 'none'}) are intact: free space or fix the "
        "directory, then rerun the same command to resume")

  def read_meta(self, step: int) -> dict[str, Any]:
    try:
      return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
          "meta"]
    except Exception as e:  # noqa: BLE001 - any failure to read is reported the same way
      raise self._error(step, e) from e

  def restore(self, step: int, abstract_state, data_iterator=None, *,
              expect_meta: dict[str, Any] | None = None,
              meta_defaults: dict[str, Any] | None = None):
    """(state, meta) of `step`; restores `data_iterator`'s position in place when given.

    `expect_meta`: entries that must equal the saved ones (e.g. the model config), so a
    checkpoint of a different model fails with a readable error instead of a shape mismatch.
    `meta_defaults`: values for keys the saved entries lack (fields added to the config after
    the checkpoint was written, at the defaults that reproduce the old behaviour).
    """
    if step not in self.steps():
      raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; "
                            f"available: {self.steps() or 'none'}")
    meta = self.read_meta(step)
    for key, expected in (expect_meta or {}).items():
      saved = with_defaults(meta.get(key), (meta_defaults or {}).get(key))
      if saved != expected:
        diff = _describe_difference(saved, expected)
        raise CheckpointError(
            f"checkpoint {self.directory / str(step)} was written with a different {key} "
            f"({diff}); use the config it was trained with, or another --workdir")
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      with _quiet_stderr_on_failure():
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001
      raise self._error(step, e) from e
    return restored["state"], meta

  def restore_data(self, step: int, data_iterator) -> None:
    """Restores only the data position of `step` into `data_iterator`, in place."""
    try:
      with _quiet_stderr_on_failure():
        self._manager.restore(step, args=ocp.args.Composite(
            data=grain.checkpoint.CheckpointRestore(data_iterator)))
    except Exception as e:  # noqa: BLE001
      raise self._error(step, e) from e

  def abandon_after(self, step: int, workdir: pathlib.Path) -> list[int]:
    """Moves checkpoints newer than `step` out of the way (to resume from `step` without
    losing them); returns their steps. Process 0 moves; every process waits for it."""
    newer = [s for s in self.steps() if s > step]
    if newer and jax.process_index() == 0:
      target = workdir / "abandoned_checkpoints" / time.strftime("%Y%m%d-%H%M%S")
      target.mkdir(parents=True, exist_ok=True)
      for s in newer:
        shutil.move(str(self.directory / str(s)), str(target / str(s)))
    if newer:
      _sync("moe_jax_abandon_checkpoints")
      self._manager.reload()
    return newer

  def _error(self, step: int, cause: Exception) -> CheckpointError:
    older = [s for s in self.steps() if s < step]
    hint = (f"resume from an older one (available: {older}) with --config.restore_step="
            f"{older[-1]}" if older else "there is no older checkpoint; move it away to start "
            "over")
    return CheckpointError(f"checkpoint {self.directory / str(step)} is corrupt or incomplete "
                           f"({short_reason(cause)}); {hint}",
                           retry_flags=(f"--config.restore_step={older[-1]}",) if older else ())

  def wait(self) -> None:
    try:
      with _quiet_stderr_on_failure():
        self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - an async save that failed in the background
      raise self._save_error(self.latest_step() or -1, e) from e

  def close(self) -> None:
    self._manager.close()


@contextlib.contextmanager
def _quiet_stderr_on_failure(drain_seconds: float = 0.5):
  """When a restore or save fails, TensorStore's callbacks for the reads still in flight fire into
  the event loop Orbax has just closed, and each prints an "Event loop is closed" traceback
  from a C++ thread (dozens of them; no Python hook sees them). Silence file descriptor 2
  while the restore runs and, if it fails, while those callbacks drain; the failure itself
  is reported by the caller. MOE_JAX_THREAD_TRACEBACKS=1 keeps them."""
  if os.environ.get("MOE_JAX_THREAD_TRACEBACKS"):
    yield
    return
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    yield
  except BaseException:
    time.sleep(drain_seconds)
    raise
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


_ABSENT = object()


def _differences(saved, expected, path: str):
  """'path.to.leaf: saved a, now b' for each leaf that differs, dicts flattened."""
  if isinstance(saved, dict) and isinstance(expected, dict):
    for k in sorted(set(saved) | set(expected), key=str):
      yield from _differences(saved.get(k, _ABSENT), expected.get(k, _ABSENT),
                              f"{path}.{k}" if path else str(k))
  elif saved != expected:
    show = lambda v: ("(not set)" if v is _ABSENT else f"{{{len(v)} fields}}"
                      if isinstance(v, dict) else repr(v))
    yield f"{path + ': ' if path else ''}saved {show(saved)}, now {show(expected)}"


def _describe_difference(saved, expected, limit: int = 6) -> str:
  """The changed leaves of two (nested) dicts, at most `limit` named: 'moe.num_experts: saved
  8, now 4; d_model: ...' (a whole `moe` dict dumped was ~1,000 characters)."""
  changes = list(_differences(saved, expected, ""))
  more = len(changes) - limit
  return "; ".join(changes[:limit] + ([f"and {more} more"] if more > 0 else []))


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
