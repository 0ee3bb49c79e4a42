"""`python -m moe_jax.hf import` trusts nothing in the checkpoint directory (issue 28, items 6,
7, 11 and 3): config.json's sizes are checked against the safetensors headers before anything
is allocated from them, shard names are plain file names in --from, symbolic links are not
carried, no path can inject code into imported_config.py, a missing shard names the index,
and an import killed mid-write reruns to the same result. Each refusal is one `error:` line,
rc 1, and creates nothing beside the source (no workdir, no scratch directory)."""
import ast
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from moe_jax.hf import convert, families, model_io, safetensors_io, workdirs
from moe_jax.workdir import WorkdirError
from tests.test_hf import FIXTURES, _tensors, copy_with_config, edit_config
from tests.test_hf_cli import SMALL_RUN, _hf_cli
from tests.train_helpers import (assert_one_line_error, losses, run_cli, snapshot,
                                 subprocess_env)

ALL = ["mixtral", "mixtral_fused", "qwen3_moe", "olmoe", "qwen3_moe_bf16", "qwen2_moe",
       "deepseek_v2", "deepseek_v3", "glm4_moe", "gpt_oss", "gpt_oss_mxfp4"]


def _scratch(workdir):
  return workdir.with_name(f".{workdir.name}.hf-import")


def _import_cmd(source, workdir):
  return [sys.executable, "-m", "moe_jax.hf", "import", f"--from={source}",
          f"--workdir={workdir}", *SMALL_RUN]


def _refused(tmp_path, source, pattern):
  """The CLI import of `source` into a new workdir fails in one line matching `pattern`, and
  nothing under tmp_path changes (no workdir, no scratch directory, the source as it was)."""
  workdir = tmp_path / "w"
  before = snapshot(tmp_path)
  names = sorted(os.listdir(tmp_path))
  line = assert_one_line_error(run_cli(_import_cmd(source, workdir)), pattern)
  assert not workdir.exists() and not _scratch(workdir).exists()
  assert sorted(os.listdir(tmp_path)) == names and snapshot(tmp_path) == before
  return line


# --- item 6: sizes from config.json are checked before anything is allocated from them -----

@pytest.mark.parametrize("field,value,pattern", [
    ("num_experts", 10_000_000,
     r"^error: config.json: num_experts=10000000, but the checkpoint's router "
     r"'model.layers.0.mlp.gate.weight' has shape \[4, 32\] \(4 experts\)$"),
    ("num_hidden_layers", 10**9,
     r"^error: config.json: num_hidden_layers=1000000000, but the checkpoint's tensors hold "
     r"layers 0..1: tensor 'model.layers.2.input_layernorm.weight' is missing$"),
])
def test_cli_refuses_absurd_sizes_before_allocating(tmp_path, field, value, pattern):
  """The repro: num_experts 1e7 in the 146 KB OLMoE fixture took 38 s and 7.6 GB, then a
  39-line MemoryError."""
  source = copy_with_config(tmp_path, "olmoe")
  edit_config(source, **{field: value})
  start = time.monotonic()
  _refused(tmp_path, source, pattern)
  assert time.monotonic() - start < 60


@pytest.mark.parametrize("name", ALL)
def test_sizes_are_checked_against_the_headers_in_no_time(tmp_path, name):
  directory = copy_with_config(tmp_path, name)
  source, checkpoint = model_io.open_source(directory)     # as made: every count agrees
  assert convert.expected_count(source.section, source.layout) == len(checkpoint.names())
  original = json.loads((FIXTURES / name / "config.json").read_text())
  field = next(f for f in families.family_of(original).num_experts_fields if f in original)
  # One layer too few (DeepSeek-V3's and GLM's layer 1 is then no MTP layer: it has no eh_proj)
  one_layer = {"num_hidden_layers": 1, **({"layer_types": original["layer_types"][:1]}
                                          if "layer_types" in original else {})}
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  for changes, message in [({field: 10**8}, rf"{field}=100000000, but the checkpoint's router "),
                           ({"num_hidden_layers": 10**9}, r"num_hidden_layers=1000000000, but"),
                           (one_layer, r"hold layers 0..1 \(2 layers\)")]:
    edit_config(directory, **original)
    edit_config(directory, **changes)
    start = time.monotonic()
    with pytest.raises(ValueError, match=message):
      model_io.open_source(directory)
    assert time.monotonic() - start < 2
  assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000     # KiB


def test_a_header_lacking_tensors_is_refused_before_the_table_is_built(tmp_path):
  """The routers agree with config.json but expert 3's tensors are gone: the tensor count
  (computed, not listed) is checked first, naming the first missing tensor."""
  directory = copy_with_config(tmp_path, "olmoe")
  ckpt = safetensors_io.open_checkpoint(directory)
  tensors = {n: ckpt[n].copy() for n in ckpt.names() if ".experts.3." not in n}
  del ckpt
  safetensors_io.write_checkpoint(directory, tensors)
  with pytest.raises(ValueError, match=r"config.json \(num_hidden_layers=2, 4 experts\) implies "
                                       r"45 tensors, the checkpoint holds 39: tensor "
                                       r"'model.layers.0.mlp.experts.3.gate_proj.weight' is "
                                       "missing"):
    model_io.open_source(directory)


def test_dense_pattern_is_linear_and_finds_what_a_search_finds():
  family = families.FAMILIES["Qwen3MoeForCausalLM"]

  def search(step, only, layers):     # the old O(layers^3) search, as the reference
    want = [i not in only and (i + 1) % step == 0 for i in range(layers)]
    for first in range(layers + 1):
      for every in range(1, layers + 1):
        if [i >= first and (i - first) % every == 0 for i in range(layers)] == want:
          return first, every
    return None

  for layers in range(1, 8):
    for step in range(1, 4):
      for only in ([], [0], [1], [0, 1], [2], [layers - 1], [0, 3]):
        try:
          got = families._dense_pattern(
              family, {"decoder_sparse_step": step, "mlp_only_layers": only}, layers)
        except ValueError:
          got = None
        assert got == search(step, only, layers), (layers, step, only)
  start = time.monotonic()      # 300 layers took 1.5 s; 100,000 now take milliseconds
  assert families._dense_pattern(family, {"decoder_sparse_step": 2, "mlp_only_layers": [1]},
                                 100_000) == (3, 2)
  assert time.monotonic() - start < 1


# --- item 7 and 11: shard names, missing shards, carried files, code in paths ---------------

def _point_shard_at(directory, shard, bad):
  index = directory / safetensors_io.INDEX_FILE
  data = json.loads(index.read_text())
  data["weight_map"] = {n: (bad if f == shard else f) for n, f in data["weight_map"].items()}
  index.write_text(json.dumps(data))
  (directory / shard).unlink()
  return index


@pytest.mark.parametrize("bad", ["../other/model-00001-of-00003.safetensors", "/etc/passwd"])
def test_cli_refuses_a_shard_name_outside_the_checkpoint(tmp_path, bad):
  """Before: `../other/...` imported another checkpoint's weights, /etc/passwd was parsed."""
  shutil.copytree(FIXTURES / "mixtral", tmp_path / "other")     # what ../other would read
  source = copy_with_config(tmp_path, "mixtral")
  index = _point_shard_at(source, "model-00001-of-00003.safetensors", bad)
  _refused(tmp_path, source, rf"^error: {re.escape(str(index))}: weight_map entry "
                             rf"'[^']+': {re.escape(repr(bad))} is not a shard file name")


@pytest.mark.parametrize("bad", ["sub/model.safetensors", "..", "", "a\\b.safetensors", 3,
                                 "model.safetensors\0.txt"])
def test_shard_names_must_be_plain_file_names(tmp_path, bad):
  source = copy_with_config(tmp_path, "mixtral")
  _point_shard_at(source, "model-00002-of-00003.safetensors", bad)
  with pytest.raises(ValueError,
                     match=r"weight_map entry 'model\.[^']+': .+ is not a shard file name"):
    model_io.open_source(source)


def test_cli_missing_shard_names_the_index(tmp_path):
  source = copy_with_config(tmp_path, "mixtral")
  (source / "model-00002-of-00003.safetensors").unlink()
  index = source / safetensors_io.INDEX_FILE
  _refused(tmp_path, source, rf"^error: {re.escape(str(index))}: weight_map puts tensor "
                             r"'model\.[^']+' in model-00002-of-00003.safetensors, which is not "
                             rf"in {re.escape(str(source))} \(a shard missing")


def test_cli_import_and_export_leave_symbolic_links_behind(tmp_path):
  """Before: `vocab.txt -> /etc/passwd` was copied into the workdir and then into the export a
  user would publish. Plain files still travel; each link left behind is a note."""
  (tmp_path / "secret.txt").write_text("SECRET")
  source = copy_with_config(tmp_path, "olmoe")
  (source / "vocab.txt").symlink_to("/etc/passwd")
  (source / "merges.txt").symlink_to(tmp_path / "secret.txt")
  (source / "special_tokens_map.json").symlink_to("../secret.txt")
  (source / "tokenizer_config.json").write_text('{"model_max_length": 64}')
  workdir = tmp_path / "run"
  proc = run_cli(_import_cmd(source, workdir))
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ("merges.txt", "special_tokens_map.json", "vocab.txt"):
    assert f"note: not carried along from {source}: {name} (a symbolic link" in proc.stdout
  kept = workdir / workdirs.SOURCE_DIR
  assert sorted(os.listdir(kept)) == ["config.json", "generation_config.json",
                                      "tokenizer_config.json"]
  assert json.loads((workdir / workdirs.RECORD_FILE).read_text())["carried_files"] == [
      "generation_config.json", "tokenizer_config.json"]
  everything = b"".join(snapshot(workdir).values())
  assert b"SECRET" not in everything and b"root:" not in everything
  proc = _hf_cli("export", f"--workdir={workdir}", f"--to={tmp_path / 'out'}", "--cpu_devices=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "generation_config.json",
                                                  "model.safetensors", "tokenizer_config.json"]
  assert not any(p.is_symlink() for p in (tmp_path / "out").iterdir())
  assert _tensors(tmp_path / "out") == _tensors(FIXTURES / "olmoe")


def _hub_snapshot(tmp_path, name):
  """`name`'s fixture laid out as a Hugging Face hub cache: every file of
  models--test--NAME/snapshots/REV/ is a relative link to a content-named file in ../../blobs/."""
  repo = tmp_path / "hub" / f"models--test--{name}"
  snapshot_dir, blobs = repo / "snapshots" / "0123abcd", repo / "blobs"
  snapshot_dir.mkdir(parents=True)
  blobs.mkdir()
  for i, f in enumerate(sorted((FIXTURES / name).iterdir())):
    shutil.copy(f, blobs / f"blob{i:02d}")
    (snapshot_dir / f.name).symlink_to(f"../../blobs/blob{i:02d}")
  (blobs / "tok").write_text('{"model_max_length": 64}')
  (snapshot_dir / "tokenizer_config.json").symlink_to("../../blobs/tok")
  return snapshot_dir


def test_cli_imports_a_hub_cache_snapshot_whose_files_link_into_its_blobs(tmp_path):
  """The hub cache's own layout: links that stay inside models--ORG--NAME/ are followed, for
  the weights and for the files carried along (copied as files, not links)."""
  source = _hub_snapshot(tmp_path, "olmoe")
  workdir = tmp_path / "run"
  proc = run_cli(_import_cmd(source, workdir))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "not carried along" not in proc.stdout
  kept = workdir / workdirs.SOURCE_DIR
  assert sorted(os.listdir(kept)) == ["config.json", "generation_config.json",
                                      "tokenizer_config.json"]
  assert not any(p.is_symlink() for p in kept.iterdir())
  assert json.loads((kept / "tokenizer_config.json").read_text()) == {"model_max_length": 64}
  proc = _hf_cli("export", f"--workdir={workdir}", f"--to={tmp_path / 'out'}", "--cpu_devices=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _tensors(tmp_path / "out") == _tensors(FIXTURES / "olmoe")


@pytest.mark.parametrize("layout", ["plain", "hub"])
def test_cli_refuses_a_shard_linked_out_of_the_checkpoint(tmp_path, layout):
  """A shard that is a link to another model's weights (outside the directory, or outside the
  hub cache's repository folder) is not read."""
  shutil.copytree(FIXTURES / "mixtral", tmp_path / "other")
  # mixtral's shards 1 and 3 stay links into blobs/ in the hub layout: those are followed
  source = copy_with_config(tmp_path, "mixtral") if layout == "plain" else _hub_snapshot(tmp_path, "mixtral")
  shard = source / "model-00002-of-00003.safetensors"
  shard.unlink()
  shard.symlink_to(tmp_path / "other" / shard.name)
  _refused(tmp_path, source, rf"^error: {re.escape(str(shard))} is a symbolic link to "
                             rf"{re.escape(str(tmp_path / 'other' / shard.name))}, outside the "
                             r"checkpoint directory")


def test_cli_a_checkpoint_path_cannot_inject_code(tmp_path):
  """Before: --from was pasted into imported_config.py's docstring, so this directory name
  ran print('INJECTED') when `train` loaded the config (and then failed)."""
  evil = tmp_path / "evil\"\"\"+print('INJECTED')+\"\"\""
  shutil.copytree(FIXTURES / "olmoe", evil)
  workdir = tmp_path / "run \"\"\"+print('INJECTED')+\"\"\""       # the workdir is pasted too
  proc = run_cli(_import_cmd(evil, workdir))
  outputs = [proc.stdout + proc.stderr]
  assert proc.returncode == 0, proc.stderr[-3000:]
  config_py = workdir / workdirs.CONFIG_PY
  doc = ast.get_docstring(ast.parse(config_py.read_text()), clean=False)
  assert f"imported from {evil} by" in doc                    # the paths as they are
  assert f"--config {shlex.quote(str(config_py))} --workdir {shlex.quote(str(workdir))}" in doc
  proc = run_cli([sys.executable, "-m", "moe_jax.train", f"--config={config_py}",
                  f"--workdir={workdir}", "--cpu_devices=1", "--config.steps=1"])
  outputs.append(proc.stdout + proc.stderr)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(losses(workdir)) == [1]
  for output in outputs:
    assert "INJECTED" not in [line.strip() for line in output.splitlines()], output[-3000:]


# --- item 3: a killed import reruns ---------------------------------------------------------

# make test's budget: test-all (make test reruns a killed upcycle, the same scratch-and-rename)
@pytest.mark.slow
def test_cli_import_killed_mid_write_reruns_to_the_same_result(tmp_path):
  """SIGKILL once checkpoint 0 is being written (into the scratch directory beside the
  workdir): the workdir does not exist yet, and the same command then imports in full, as a
  clean import does."""
  workdir = tmp_path / "run"
  cmd = _import_cmd(FIXTURES / "olmoe", workdir)
  proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 240
  try:
    while not (_scratch(workdir) / "checkpoints").exists():
      assert proc.poll() is None and time.monotonic() < deadline, "the import never wrote"
      time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.kill()
    proc.wait()
  assert not workdir.exists()                     # cut short: nothing of it in the workdir
  assert (_scratch(workdir) / workdirs.SCRATCH_MARK).exists()
  rerun = run_cli(cmd)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "imported OlmoeForCausalLM" in rerun.stdout
  assert not _scratch(workdir).exists()
  clean = tmp_path / "clean"
  proc = run_cli(_import_cmd(FIXTURES / "olmoe", clean))
  assert proc.returncode == 0, proc.stderr[-3000:]
  files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*")
                           if "checkpoints" not in p.parts)
  assert files(workdir) == files(clean)
  for name in ("config.json", workdirs.RECORD_FILE, "hf_source/config.json",
               "hf_source/generation_config.json"):
    assert (workdir / name).read_bytes() == (clean / name).read_bytes(), name
  assert ((workdir / workdirs.CONFIG_PY).read_text()
          == (clean / workdirs.CONFIG_PY).read_text().replace(str(clean), str(workdir)))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["0"]
  proc = _hf_cli("export", f"--workdir={workdir}", f"--to={tmp_path / 'out'}", "--step=0",
                 "--cpu_devices=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _tensors(tmp_path / "out") == _tensors(FIXTURES / "olmoe")    # as a clean import's


def test_scratch_directory_not_left_by_an_import_is_refused_untouched(tmp_path):
  workdir = tmp_path / "run"
  scratch = _scratch(workdir)
  scratch.mkdir()
  (scratch / "mine.txt").write_text("keep")
  with pytest.raises(WorkdirError, match=r"holds mine.txt and is not an import's: move it away"):
    workdirs.import_workdir(FIXTURES / "olmoe", workdir, overrides=["data.seq_len=16"],
                            say=lambda _: None)
  assert sorted(os.listdir(tmp_path)) == [".run.hf-import"]
  assert snapshot(scratch) == {"mine.txt": b"keep"}
