"""A transformers checkpoint directory <-> a moe_jax DecoderLM, in memory.

    model, source = load("path/to/OLMoE-1B-7B-0924", mesh=mesh)    # every check first
    logits_BLV, routings = model(tokens_BL)
    export(model, source, "out/")        # config.json as it was + safetensors in its layout

`load` reads config.json and the safetensors headers, checks everything (the family's fields,
every tensor's name and shape) and only then reads the data, one mapping at a time, straight
into the params of a model built abstractly (nothing is initialised at random) and placed on
`mesh` as any moe_jax model is: experts stacked [E, ...] and split over the 'expert' axis.
Each param keeps its tensor's dtype, so a bfloat16 checkpoint stays bfloat16 (`param_dtype`
casts them all instead). `source` (an `HFSource`) is what `export` needs to write the model
back: the source config.json verbatim, the tensor layout and dtypes, and the directory whose
small files (tokenizer, generation config) are copied along.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from moe_jax.model_section import DTYPES
from moe_jax.hf import convert, families, gpt_oss, links, safetensors_io
from moe_jax.models.moe import RouterState
from moe_jax.models.transformer import DecoderLM, TransformerConfig, make_config

CONFIG_FILE = "config.json"
# The files beside the weights that travel with them (tokenizer, generation config, chat
# template); weights, code and model cards do not.
_CARRIED_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".jinja")
_CARRIED_MAX_BYTES = 64 * 2**20
# What must agree between a model and the source it is exported as (the shapes are checked
# tensor by tensor; these change the function without changing a shape).
_SAME_FIELDS = ("rope_theta", "norm_eps", "qk_norm", "activation", "glu", "tie_embeddings",
                "first_dense_layers", "moe_every", "attention", "rope_interleave", "rope_fraction",
                "sliding_window", "sliding_every", "rope_scaling")
# The router options that change what a family's router computes.
_SAME_ROUTING = ("k", "order", "renormalize", "score", "num_groups", "top_groups",
                 "group_score", "routed_scaling_factor")


@dataclasses.dataclass(frozen=True)
class HFSource:
  """What an import keeps of its source: enough to write the model back in its format."""
  directory: str                 # holds config.json and the files carried along
  hf_config: dict                # config.json, verbatim
  architecture: str
  layout: str                    # 'hub' or 'fused' (moe_jax.hf.convert)
  dtype: str                     # the tensors' dtype ('float32', 'bfloat16', 'float16')
  tensor_dtypes: dict = dataclasses.field(default_factory=dict)   # tensors in another one
  mtp_tensors: int = 0           # multi-token-prediction tensors left out (without_mtp_layers)

  @property
  def family(self) -> families.Family:
    return families.FAMILIES[self.architecture]

  @property
  def section(self) -> dict:
    """The model's config.model.* keys."""
    return families.model_section(self.family, self.hf_config, self.dtype)

  def table(self) -> list[convert.Mapping]:
    return convert.mappings(self.family, self.section, self.layout)

  def export_table(self) -> list[convert.Mapping]:
    """The tensors an export writes: the source's layout, MXFP4 experts as float ones."""
    return convert.mappings(self.family, self.section, convert.export_layout(self.layout))


def carried_files(directory, skipped: list[str] | None = None) -> list[str]:
  """The names of the small files beside the weights that an export copies along: plain files,
  and links that stay inside the checkpoint (moe_jax.hf.links: a Hugging Face cache snapshot's
  links into its blobs/). Any other link (it could point anywhere: `vocab.txt -> /etc/passwd`)
  or a file over 64 MiB is left behind; `skipped` gets a note on each."""
  directory = pathlib.Path(directory)
  skip = {CONFIG_FILE, safetensors_io.INDEX_FILE}
  names = []
  for p in sorted(directory.iterdir()):
    if p.name.startswith(".") or p.name in skip or p.suffix not in _CARRIED_SUFFIXES:
      continue
    try:
      target = links.resolve_member(p, directory)
    except ValueError:
      why = "a symbolic link out of the checkpoint directory: only its own files are copied"
    else:
      if not target.is_file():
        continue
      if target.stat().st_size <= _CARRIED_MAX_BYTES:
        names.append(p.name)
        continue
      why = f"larger than {_CARRIED_MAX_BYTES // 2**20} MiB"
    if skipped is not None:
      skipped.append(f"{p.name} ({why})")
  return names


def copy_plain(src, dst, directory=None) -> None:
  """Copies the file `src` to `dst`. A link is followed only where `carried_files` allows it
  (inside the checkpoint `directory`); the file opened is never itself a link, should one
  replace it after it was listed."""
  if directory is not None:
    src = links.resolve_member(src, directory)
  fd = os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
  with os.fdopen(fd, "rb") as f, open(dst, "wb") as out:
    shutil.copyfileobj(f, out)


def read_config(directory) -> dict:
  path = pathlib.Path(directory) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: is {directory} a transformers checkpoint "
                            "directory?")
  text = links.resolve_member(path, directory).read_text()
  try:
    config = json.loads(text)
  except ValueError as e:
    raise ValueError(f"{path}: not JSON ({e})") from e
  if not isinstance(config, dict):
    raise ValueError(f"{path}: not a JSON object")
  return config


def open_source(directory) -> tuple[HFSource, safetensors_io.Checkpoint]:
  """The checked source and its (memory-mapped, unread) tensors. Raises ValueError naming the
  first field or tensor that is not understood."""
  directory = pathlib.Path(directory).expanduser().absolute()
  hf_config = read_config(directory)
  family = families.family_of(hf_config)
  checkpoint, mtp = without_mtp_layers(hf_config, safetensors_io.open_checkpoint(directory))
  convert.check_sizes(family, hf_config, checkpoint)    # before any size is used
  names = checkpoint.names()
  counts: dict[str, int] = {}
  for name in names:
    key = str(checkpoint.dtype(name))
    counts[key] = counts.get(key, 0) + 1
  stated = families.dtype_name(hf_config)
  common = stated or max(counts, key=counts.get, default="float32")
  if common not in DTYPES:
    raise ValueError(f"{directory}: tensors of dtype {common} are not supported; allowed: "
                     + ", ".join(DTYPES))
  source = HFSource(str(directory), hf_config, family.architecture,
                    convert.detect_layout(names), common,
                    {n: str(checkpoint.dtype(n)) for n in names
                     if str(checkpoint.dtype(n)) != common}, mtp)
  convert.check_layers(family, source.section, source.layout, checkpoint, str(directory))
  if family.architecture == gpt_oss.ARCHITECTURE:      # after its config's own checks
    gpt_oss.check_layout(hf_config, source.layout)
  convert.check_tensors(source.table(), checkpoint, str(directory))
  return source, checkpoint


def without_mtp_layers(hf_config: dict, checkpoint):
  """DeepSeek-V3's and GLM-4.5's multi-token-prediction layers (num_nextn_predict_layers of
  them, stored as the layers after num_hidden_layers) are not part of the model transformers
  builds, nor of moe_jax's: their tensors are left out. -> (the checkpoint without them, how
  many tensors were left out). An export does not write them back. A layer counts as one only
  if it holds an MTP module's projection (eh_proj): a num_hidden_layers one too small must not
  pass a model layer off as an MTP layer and import the model truncated."""
  n = hf_config.get("num_nextn_predict_layers") or hf_config.get("num_mtp_layers") or 0
  layers = hf_config.get("num_hidden_layers")
  if not isinstance(n, int) or isinstance(n, bool) or n < 1 or not isinstance(layers, int):
    return checkpoint, 0
  names = checkpoint.names()
  marked = {i for i in range(layers, layers + n) if f"model.layers.{i}.eh_proj.weight" in names}
  mtp = [name for name in names
         if (m := convert.LAYER_NAME.match(name)) and int(m.group(1)) in marked]
  return checkpoint.without(mtp), len(mtp)


def model_config(section: dict) -> TransformerConfig:
  """The TransformerConfig of a config.model.* section (dtype names resolved)."""
  return make_config(**{**section, "dtype": DTYPES[section["dtype"]],
                        "param_dtype": DTYPES[section["param_dtype"]]})


def fill_model(config: TransformerConfig, table, checkpoint, *, mesh=None,
               cast: bool = False) -> DecoderLM:
  """A DecoderLM of `config` whose params are the checkpoint's tensors (`cast`: in the dtypes
  the model would have been built with, else in the tensors' own), placed as the model
  places them on `mesh`. Built abstractly: no param is initialised at random."""
  abstract = nnx.eval_shape(lambda: DecoderLM(config, rngs=nnx.Rngs(0), mesh=mesh))
  graphdef, params, rest = nnx.split(abstract, (nnx.Param, RouterState), ...)
  tree = nnx.to_pure_dict(params)
  filled = set()
  for m in table:
    for path, array in zip(m.params, convert.forward(m, [checkpoint[n] for n in m.tensors])):
      node = tree
      for key in path[:-1]:
        node = node[key]
      target = node[path[-1]]
      assert target.shape == array.shape, (path, target.shape, array.shape)
      if cast:
        array = array.astype(target.dtype)
      elif m.kind.startswith("mxfp4"):
        # MXFP4 decodes to float32; its own dtype is the checkpoint's (bfloat16 on the Hub),
        # exact for every value, where float32 would double the largest tensors' memory.
        array = array.astype(config.param_dtype)
      if mesh is None:
        node[path[-1]] = jnp.asarray(array)
      else:
        sharding = getattr(target, "sharding", None) or NamedSharding(mesh, P())
        node[path[-1]] = jax.device_put(array, sharding)
      filled.add(path)
  for path, value in _flat(tree):
    # A router state no tensor holds (the deepseek router's selection bias imported from
    # DeepSeek-V2, which has none) starts as the router's init does: zeros.
    if path not in filled and "router_state" in path:
      node = tree
      for key in path[:-1]:
        node = node[key]
      zeros = jnp.zeros(value.shape, value.dtype)
      node[path[-1]] = zeros if mesh is None else jax.device_put(zeros, NamedSharding(mesh, P()))
      filled.add(path)
  every = {path for path, _ in _flat(tree)}
  assert every == filled, sorted(every - filled, key=str)   # the table covers the model
  nnx.replace_by_pure_dict(params, tree)
  return nnx.merge(graphdef, params, rest)


def _flat(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flat(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def load(directory, *, mesh=None, param_dtype: str | None = None,
         dtype: str | None = None) -> tuple[DecoderLM, HFSource]:
  """(the moe_jax DecoderLM of the transformers checkpoint in `directory`, its HFSource).
  param_dtype ('float32', 'bfloat16', 'float16'): cast every param to it; default: each param
  keeps its tensor's dtype. dtype: the compute dtype; default: the checkpoint's."""
  source, checkpoint = open_source(directory)
  section = dict(source.section)
  for key, value in (("param_dtype", param_dtype), ("dtype", dtype)):
    if value is not None:
      if value not in DTYPES:
        raise ValueError(f"load: {key}={value!r} is not allowed; allowed: {', '.join(DTYPES)}")
      section[key] = value
  model = fill_model(model_config(section), source.table(), checkpoint, mesh=mesh,
                     cast=param_dtype is not None)
  return model, source


def np_dtype(name: str) -> np.dtype:
  return np.dtype(ml_dtypes.bfloat16 if name == "bfloat16" else name)


def check_exportable(config: TransformerConfig, source: HFSource) -> None:
  """A model exports as `source` only if it computes what source's architecture does."""
  want = model_config(source.section)
  for name in _SAME_FIELDS:
    if getattr(config, name) != getattr(want, name):
      raise ValueError(f"export: the model's {name}={getattr(config, name)!r} but "
                       f"{source.architecture} from {source.directory} has {getattr(want, name)!r}")
  mine, theirs = config.moe, want.moe
  if mine is None or theirs is None or mine.built_router.name != theirs.built_router.name or any(
      mine.built_router.options.get(k) != theirs.built_router.options.get(k)
      for k in _SAME_ROUTING):
    raise ValueError(f"export: the model's router ({mine and mine.built_router.options}) is not "
                     f"{source.architecture}'s ({theirs and theirs.built_router.options})")


def _check_nothing_left_behind(params: dict, table, source: HFSource) -> None:
  """Every param of the model goes into a tensor: one the family has no tensor for (a bias,
  attention sinks, a shared expert the source lacks) would be dropped, and the checkpoint would
  compute another model. A router state the family lacks may stay behind while it is zeros
  (DeepSeek-V2's selection bias, which its router never moves)."""
  written = {path for m in table for path in m.params}
  for path, value in params.items():
    if path not in written and not ("router_state" in path and not value.any()):
      raise ValueError(f"export: the model's param {'/'.join(map(str, path))} has no tensor in "
                       f"{source.architecture} (from {source.directory}): written, the "
                       "checkpoint would compute another model")


def export_tensors(model: DecoderLM, source: HFSource, dtype: str | None = None) -> dict:
  """{HF name: array} of `model` in `source`'s layout; each tensor in the source's dtype for
  it, or all in `dtype`."""
  check_exportable(model.transformer.config, source)
  params = dict(_flat(nnx.to_pure_dict(nnx.state(model, (nnx.Param, RouterState)))))
  table = source.export_table()
  for m in table:
    for path in m.params:
      if path not in params:
        raise ValueError(f"export: the model has no param {'/'.join(map(str, path))}, which "
                         f"{source.architecture} needs")
  host = {p: np.asarray(jax.device_get(v)) for p, v in params.items()}
  _check_nothing_left_behind(host, table, source)
  tensors = convert.from_params(table, host)
  for m in table:
    for name, shape in zip(m.tensors, m.shapes):
      if tensors[name].shape != shape:
        raise ValueError(f"export: tensor {name!r} would have shape {list(tensors[name].shape)}"
                         f", {source.architecture} from {source.directory} has {list(shape)}")
  out = {}
  for name, array in tensors.items():
    out[name] = array.astype(np_dtype(dtype or source.tensor_dtypes.get(name, source.dtype)))
  return out


def check_out_dir(out_dir) -> pathlib.Path:
  out_dir = pathlib.Path(out_dir).expanduser().absolute()
  if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
    raise ValueError(f"--to {out_dir} exists and is not an empty directory; export into a new "
                     "one")
  return out_dir


def export(model: DecoderLM, source: HFSource, out_dir, *, dtype: str | None = None,
           max_shard_bytes: int = 5 * 2**30) -> list[str]:
  """Writes `model` as a transformers checkpoint directory `out_dir` (new or empty): the
  source's config.json (its `dtype` field updated only if `dtype` changes it), the weights
  as safetensors in the source's layout (MXFP4 experts as float: a dequantised checkpoint,
  without quantization_config), sharded beyond `max_shard_bytes`, and the source's carried
  files. Written beside `out_dir` and renamed into place, so a failed export leaves
  nothing half-written. Returns the file names."""
  out_dir = check_out_dir(out_dir)
  if dtype is not None and dtype not in DTYPES:
    raise ValueError(f"export: dtype={dtype!r} is not allowed; allowed: {', '.join(DTYPES)}")
  tensors = export_tensors(model, source, dtype)
  config = dict(source.hf_config)
  if source.layout == "mxfp4":          # written as the float tensors they stand for
    config.pop("quantization_config", None)
  if dtype is not None and dtype != source.dtype:
    config["dtype" if "dtype" in config or "torch_dtype" not in config else "torch_dtype"] = dtype
  tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  try:
    written = safetensors_io.write_checkpoint(tmp, tensors, max_shard_bytes=max_shard_bytes)
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    carried = carried_files(source.directory)
    for name in carried:
      copy_plain(pathlib.Path(source.directory) / name, tmp / name)
    if out_dir.exists():
      out_dir.rmdir()
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return sorted([CONFIG_FILE, *written, *carried])
