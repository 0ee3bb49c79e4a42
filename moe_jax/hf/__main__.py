r"""python -m moe_jax.hf import|export: Hugging Face checkpoints into moe_jax workdirs and back.

    python -m moe_jax.hf import --from HF_DIR --workdir W [--config configs/X.py] [--config.a.b=v]
    python -m moe_jax.hf export --workdir W --to OUT [--step N] [--dtype bfloat16]

See moe_jax/hf/workdirs.py for what each writes. Every refusal is one `error:` line and writes
nothing.
"""
from __future__ import annotations

import sys

COMMANDS = ("import", "export")


def main(argv):
  from moe_jax import cli
  from moe_jax.hf import workdirs
  flags = cli.FLAGS
  command = argv[1:]
  if len(command) != 1 or command[0] not in COMMANDS:
    print(f"error: give one command, {' or '.join(COMMANDS)}: python -m moe_jax.hf import "
          "--from HF_DIR --workdir W, or python -m moe_jax.hf export --workdir W --to OUT",
          file=sys.stderr)
    sys.exit(2)
  cli.init_runtime()
  if command[0] == "import":
    if flags["from"].value is None:
      cli.run_reporting_errors(_fail, "import needs --from HF_DIR (a transformers checkpoint "
                               "directory)")
    cfg = cli.run_reporting_errors(cli.load_config) if flags.config else None
    cli.run_reporting_errors(workdirs.import_workdir, flags["from"].value, flags.workdir,
                             config=cfg, overrides=cli.config_overrides())
    return
  if flags.to is None:
    cli.run_reporting_errors(_fail, "export needs --to OUT (a new directory)")
  if cli.config_overrides() or flags.config:
    cli.run_reporting_errors(_fail, "export takes no --config flags: it writes the run's own "
                             "model")
  cli.run_reporting_errors(workdirs.export_workdir, flags.workdir, flags.to, step=flags.step,
                           dtype=flags.dtype)


def _fail(message: str):
  raise ValueError(message)


def define_flags() -> None:
  from absl import flags
  from moe_jax import cli
  cli.define_flags(with_config=False)
  flags.DEFINE_string("config", None, "import: a config file for the run's data, optimizer, "
                      "steps and mesh (its model section is replaced by the checkpoint's); "
                      "override any field with --config.FIELD=VALUE.")
  flags.DEFINE_string("from", None, "import: a transformers checkpoint directory (config.json "
                      "+ safetensors) of a Mixtral, Qwen3-MoE, OLMoE or Qwen2-MoE model.")
  flags.DEFINE_string("to", None, "export: the new directory to write.")
  flags.DEFINE_integer("step", None, "export: the checkpoint to export (default newest).")
  flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"], "export: write every "
                    "tensor in this dtype (default: the source checkpoint's).")


if __name__ == "__main__":
  from moe_jax import cli
  define_flags()
  cli.run(main)
