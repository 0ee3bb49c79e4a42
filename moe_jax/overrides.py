"""Config trees completed from a schema, and `--config.a.b=value` overrides typed by it.

    schema = {"steps": Field(int, 1000), "model": {"d_model": Field(int, 128), ...}}
    tree = complete(file_config, schema)                  # every known field present
    tree, explicit = apply(tree, ["--config.steps=30", "model.router=dense"], schema)

Why not ml_collections' own flag overrides: they can only set fields the config file already
has (a field the file leaves at its default is an AttributeError traceback), cannot type a
field whose value is None (`restore_step`), and do not name the closest field for a typo.
Here every field of the schema can be set, values are parsed by the field's declared type,
and every error is one line naming the full path (`config.model.d_modle`) and the closest
known field.

A schema is a nested dict of `Field`s; a `dict`-typed field (router options, aux-loss
weights) is a leaf whose entries are free-form: `--config.model.router_options.k=1` sets one
entry (the value read as a Python literal), `--config.model.router_options={}` the whole dict.
"""
from __future__ import annotations

import ast
import copy
import difflib
import types
from typing import Any, NamedTuple, Sequence, Union, get_args, get_origin

_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("true", "1", "yes")
_FALSE_WORDS = ("false", "0", "no")


class Field(NamedTuple):
  type: Any            # int, float, bool, str, dict, or a union with None (int | None)
  default: Any


def _optional(annotation) -> tuple[Any, bool]:
  """(the non-None type, whether None is allowed) of an annotation such as `int | None`."""
  if get_origin(annotation) in (Union, types.UnionType):
    args = [a for a in get_args(annotation) if a is not type(None)]
    return args[0], len(args) < len(get_args(annotation))
  return (dict if get_origin(annotation) is dict else annotation), False


def type_name(annotation) -> str:
  base, optional = _optional(annotation)
  name = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
          dict: "a dict"}.get(base, str(base))
  return f"{name} or None" if optional else name


def literal(text: str):
  """A Python/JSON literal if `text` is one, else the text itself (a bare string)."""
  lowered = text.strip().lower()
  if lowered in _NONE_WORDS:
    return None
  if lowered in ("true", "false"):
    return lowered == "true"
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_value(text: str, annotation, path: str):
  """`text` from the command line as a value of the field's type."""
  base, optional = _optional(annotation)
  lowered = text.strip().lower()
  if optional and lowered in _NONE_WORDS:
    return None
  try:
    if base is bool:
      if lowered in _TRUE_WORDS + _FALSE_WORDS:
        return lowered in _TRUE_WORDS
      raise ValueError
    if base is int:
      return int(text)
    if base is float:
      return float(text)
    if base is dict:
      value = literal(text)
      if isinstance(value, dict):
        return value
      raise ValueError
  except ValueError:
    raise ValueError(f"--config.{path}={text}: config.{path} takes "
                     f"{type_name(annotation)}, got {text!r}") from None
  return text


def known_paths(schema: dict, prefix: str = "") -> list[str]:
  paths = []
  for key, node in schema.items():
    path = f"{prefix}{key}"
    paths += known_paths(node, path + ".") if isinstance(node, dict) else [path]
  return paths


def unknown_field_error(path: str, schema: dict, *, flag: bool = False) -> ValueError:
  """`config.<path> is not a known field` with the closest known field (spelled as a flag
  when the field came from the command line)."""
  known = known_paths(schema)
  close = difflib.get_close_matches(path, known, n=1, cutoff=0.5)
  if not close:   # a misspelled last part: compare within the section
    section = path.rsplit(".", 1)[0] + "." if "." in path else ""
    leaves = [p for p in known if p.startswith(section)]
    close = difflib.get_close_matches(path, leaves, n=1, cutoff=0.0)
  spell = "--config." if flag else "config."
  hint = f"; did you mean {spell}{close[0]}?" if close else ""
  return ValueError(f"{spell}{path} is not a known field{hint}")


def defaults(schema: dict) -> dict:
  return {k: defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default)
          for k, v in schema.items()}


def _coerce(value, field: Field):
  """Ints where a float is declared become floats (`learning_rate = 1`); nested
  ConfigDicts become dicts. Other type errors are left to validation, which names them."""
  base, _ = _optional(field.type)
  if base is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if base is dict and hasattr(value, "to_dict"):
    return value.to_dict()
  return value


def complete(tree, schema: dict, prefix: str = "", root: dict | None = None) -> dict:
  """`tree` (a ConfigDict or dict) laid over the schema's defaults: every known field is
  present afterwards; a key the schema does not know is an error naming the closest."""
  root = schema if root is None else root   # searched for the closest field of a typo
  if hasattr(tree, "to_dict"):
    tree = tree.to_dict()
  out = defaults(schema)
  for key, value in (tree or {}).items():
    path = f"{prefix}{key}"
    if key not in schema:
      raise unknown_field_error(path, root)
    node = schema[key]
    if isinstance(node, dict):
      if value is not None and not hasattr(value, "items"):
        raise ValueError(f"config.{path} is a section; got {value!r}")
      out[key] = complete(value, node, path + ".", root)
    else:
      out[key] = _coerce(copy.deepcopy(value), node)
  return out


def split_override(text: str) -> tuple[str, str]:
  """'--config.model.router=dense' (or 'model.router=dense') -> ('model.router', 'dense')."""
  body = text[2:] if text.startswith("--") else text
  body = body[len("config."):] if body.startswith("config.") else body
  if "=" not in body:
    raise ValueError(f"--config.{body}: an override is --config.FIELD=VALUE")
  path, value = body.split("=", 1)
  return path, value


def apply(tree: dict, overrides: Sequence[str], schema: dict) -> tuple[dict, frozenset[str]]:
  """The tree with each override applied in order, and the set of paths they set (entries of
  dict fields as 'model.router_options.k')."""
  tree = copy.deepcopy(tree)
  explicit = set()
  for text in overrides:
    path, raw = split_override(text)
    keys = path.split(".")
    node, target = schema, tree
    for i, key in enumerate(keys):
      if not isinstance(node, dict) or key not in node:
        raise unknown_field_error(path, schema, flag=True)
      if isinstance(node[key], dict):
        node, target = node[key], target[key]
        if i == len(keys) - 1:
          raise ValueError(f"--config.{path}: config.{path} is a section; set one of its "
                           f"fields, e.g. --config.{path}.{next(iter(node))}=...")
        continue
      field = node[key]
      rest = keys[i + 1:]
      if rest and _optional(field.type)[0] is not dict:
        raise unknown_field_error(path, schema, flag=True)
      if rest:            # one entry of a dict field
        entries = dict(target.get(key) or {})
        entries[".".join(rest)] = literal(raw)
        target[key] = entries
      else:
        target[key] = parse_value(raw, field.type, path)
      explicit.add(path)
      break
  return tree, frozenset(explicit)
