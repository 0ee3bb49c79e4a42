"""Which symbolic links in a checkpoint directory an import follows.

A file of the checkpoint (config.json, a weight shard, a file carried along) may be a link only
if it resolves inside the checkpoint: the directory itself, or, for a Hugging Face hub cache
snapshot (`models--ORG--NAME/snapshots/REVISION/`, whose files are links into
`models--ORG--NAME/blobs/`), that repository's cache folder. Anything else (`vocab.txt ->
/etc/passwd`, a shard linked to another model's weights) is refused or left behind.
"""
from __future__ import annotations

import pathlib

_CACHE_PREFIXES = ("models--", "datasets--", "spaces--")


def checkpoint_root(directory) -> pathlib.Path:
  """Where the files of the checkpoint in `directory` may live (resolved)."""
  d = pathlib.Path(directory).absolute()
  if d.parent.name == "snapshots" and d.parent.parent.name.startswith(_CACHE_PREFIXES):
    return d.parent.parent.resolve()
  return d.resolve()


def resolve_member(path, directory) -> pathlib.Path:
  """`path` (a file named in `directory`) with a symbolic link resolved, if the link stays
  inside `checkpoint_root(directory)`; raises ValueError naming the link and its target."""
  path = pathlib.Path(path)
  if not path.is_symlink():
    return path
  target = path.resolve()
  if not target.is_relative_to(checkpoint_root(directory)):
    raise ValueError(f"{path} is a symbolic link to {target}, outside the checkpoint directory "
                     "(links are followed only within it, or from a Hugging Face cache snapshot "
                     "into its blobs/)")
  return target
