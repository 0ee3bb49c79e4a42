"""The `python -m moe_jax.hf` CLI: import -> train -> evaluate -> export through subprocesses,
checkpoint 0 exported back to the source's bytes, the checkpoint's own tokenizer, a refusal in
one line that writes nothing, and the routing-anatomy notebook on an imported model."""
import json
import shutil
import subprocess
import sys

import pytest

from moe_jax.hf import workdirs
from tests.test_hf import FIXTURES, _tensors, copy_with_config, edit_config
from tests.train_helpers import (REPO, assert_one_line_error, losses, run_cli, snapshot,
                                 subprocess_env)

SMALL_RUN = ["--cpu_devices=1", "--config.mesh.data=1", "--config.data.seq_len=16",
             "--config.data.batch_size=2", "--config.data.eval_batch_size=2",
             "--config.data.eval_max_batches=1", "--config.eval.sample_tokens=0",
             "--config.optim.warmup_steps=0", "--config.log_every=1",
             "--config.model.dispatcher=sort", "--config.model.capacity_factor=4.0"]


def _hf_cli(*args):
  return run_cli([sys.executable, "-m", "moe_jax.hf", *map(str, args)])


def test_cli_import_train_evaluate_export(tmp_path):
  source = FIXTURES / "olmoe"
  before = snapshot(source)
  workdir = tmp_path / "run"
  proc = _hf_cli("import", f"--from={source}", f"--workdir={workdir}", *SMALL_RUN)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "imported OlmoeForCausalLM" in proc.stdout and "not the checkpoint's" in proc.stdout
  record = json.loads((workdir / workdirs.RECORD_FILE).read_text())
  assert (record["layout"], record["dtype"], record["step"]) == ("hub", "float32", 0)
  model = json.loads((workdir / "config.json").read_text())["model"]
  assert (model["qk_norm"], model["dispatcher"], model["d_model"]) == ("full", "sort", 32)
  proc = run_cli([sys.executable, "-m", "moe_jax.train",
                  f"--config={workdir / workdirs.CONFIG_PY}", f"--workdir={workdir}",
                  "--cpu_devices=1", "--config.steps=2"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(losses(workdir)) == [1, 2]
  proc = run_cli([sys.executable, "-m", "moe_jax.evaluate", f"--workdir={workdir}",
                  "--cpu_devices=1", "--step=0"])     # the imported model, as it came
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads((workdir / "eval.json").read_text())["step"] == 0
  proc = _hf_cli("export", f"--workdir={workdir}", f"--to={tmp_path / 'out'}",
                 "--cpu_devices=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "exported checkpoint 2" in proc.stdout
  trained, original = _tensors(tmp_path / "out"), _tensors(source)
  assert {n: v[:2] for n, v in trained.items()} == {n: v[:2] for n, v in original.items()}
  assert trained != original                                # it has been trained
  assert snapshot(source) == before


def test_import_then_export_of_checkpoint_0_gives_the_source_bytes(tmp_path):
  """In process, on the 8 devices' default mesh: the workdir path is exact too."""
  source = FIXTURES / "qwen3_moe_bf16"
  workdir = tmp_path / "run"
  workdirs.import_workdir(source, workdir, overrides=["data.seq_len=16"], say=lambda _: None)
  files = workdirs.export_workdir(workdir, tmp_path / "out", step=0, say=lambda _: None)
  assert files == ["config.json", "generation_config.json", "model.safetensors"]
  assert _tensors(tmp_path / "out") == _tensors(source)     # bf16 -> moe_jax -> bf16
  out_before = snapshot(tmp_path / "out")
  with pytest.raises(ValueError, match=r"--to .* is not an empty directory"):
    workdirs.export_workdir(workdir, tmp_path / "out")
  assert snapshot(tmp_path / "out") == out_before


def test_an_import_reads_text_with_the_checkpoints_own_tokenizer(tmp_path):
  """A tokenizer.json beside the weights becomes the run's tokenizer (copied into the
  workdir); export writes it back."""
  from moe_jax import run_setup
  from moe_jax.data.hf_tokenizer import HFTokenizer
  source = tmp_path / "olmoe"
  shutil.copytree(FIXTURES / "olmoe", source)
  tokenizer = FIXTURES / "tokenizers" / "small_vocab"
  for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy2(tokenizer / name, source / name)
  workdir = tmp_path / "run"
  said = []
  workdirs.import_workdir(source, workdir, overrides=["data.seq_len=16"], say=said.append)
  assert "the checkpoint's own tokenizer.json" in said[-1]
  run = run_setup.open_run(workdir)
  assert run.data.tokenizer == str(workdir / "tokenizer.json")
  tok = run_setup.tokenizer(run, workdir, may_train=False)
  assert isinstance(tok, HFTokenizer) and tok.eos_id == tok._tok.token_to_id("</s>")
  reference = json.loads((FIXTURES / "tokenizers" / "reference_ids.json").read_text())
  assert tok.encode(reference["small_vocab"][0]["text"]).tolist() == \
      reference["small_vocab"][0]["ids"]
  files = workdirs.export_workdir(workdir, tmp_path / "out", step=0, say=lambda _: None)
  assert "tokenizer.json" in files
  assert (tmp_path / "out" / "tokenizer.json").read_bytes() == \
      (tokenizer / "tokenizer.json").read_bytes()


def test_cli_refuses_an_unsupported_checkpoint_in_one_line_writing_nothing(tmp_path):
  bad = copy_with_config(tmp_path, "olmoe")
  edit_config(bad, architectures=["GPT2LMHeadModel"])
  before = snapshot(bad)
  assert_one_line_error(_hf_cli("import", f"--from={bad}", f"--workdir={tmp_path / 'w'}",
                                "--cpu_devices=1"),
                        r"architectures=\['GPT2LMHeadModel'\] is not supported")
  assert not (tmp_path / "w").exists() and snapshot(bad) == before


# Executes a notebook with nbclient in its own process (an in-process client's event loop,
# closed, still gets callbacks at garbage collection and pytest reports them on a later test).
_EXECUTE_NOTEBOOK = """
import sys, nbformat
from nbclient import NotebookClient
notebook = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(notebook, timeout=600, kernel_name="python3",
               resources={"metadata": {"path": sys.argv[2]}}).execute()
nbformat.write(notebook, sys.argv[3])
"""


@pytest.mark.slow   # make test's budget: test-all
def test_the_routing_anatomy_notebook_reads_an_imported_model(tmp_path):
  """notebooks/routing_anatomy.ipynb on an imported OLMoE (untied, its vocabulary holds the
  bytes; imported on the 8-device mesh, read on one device), as its first cell tells a user
  to run it: every cell runs, the logits it rebuilds block by block are the model's."""
  import nbformat
  workdir, executed = tmp_path / "olmoe", tmp_path / "executed.ipynb"
  workdirs.import_workdir(FIXTURES / "olmoe", workdir, overrides=["data.seq_len=16"],
                          say=lambda _: None)
  proc = subprocess.run(
      [sys.executable, "-c", _EXECUTE_NOTEBOOK, str(REPO / "notebooks" / "routing_anatomy.ipynb"),
       str(REPO / "notebooks"), str(executed)],
      env=subprocess_env(MOE_JAX_ANATOMY_WORKDIR=str(workdir)), capture_output=True, text=True,
      timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  notebook = nbformat.read(executed, as_version=4)
  printed = "".join(out.get("text", "") for cell in notebook.cells
                    for out in cell.get("outputs", []) if out.get("output_type") == "stream")
  assert "step 0: 2 layers, 4 experts" in printed
  assert "matches the model's logits: True" in printed
  assert "cf  0.5: dropped layer 0" in printed
