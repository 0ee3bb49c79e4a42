"""Hugging Face MoE checkpoints in and out: Mixtral, Qwen3-MoE, OLMoE and Qwen2-MoE, with no torch.

    model, source = moe_jax.hf.load("OLMoE-1B-7B-0924/", mesh=mesh)   # a moe_jax DecoderLM
    moe_jax.hf.export(model, source, "out/")                          # transformers loads it

    python -m moe_jax.hf import --from HF_DIR --workdir W [--config configs/X.py] [--config.a.b=v]
    python -m moe_jax.train --config W/imported_config.py --workdir W      # fine-tune
    python -m moe_jax.evaluate --workdir W
    python -m moe_jax.hf export --workdir W --to OUT [--step N]

Modules: safetensors_io (files through the safetensors package, the sharded index), families
(config.json -> config.model.*), convert (tensor names and layouts <-> moe_jax params), model_io
(load / export in memory), workdirs (a moe_jax workdir from a checkpoint and back: the CLI's two
commands).

An import's tokenizer is the checkpoint's tokenizer.json, copied into the workdir
(moe_jax/data/hf_tokenizer.py); a checkpoint without one keeps moe_jax's (bytes or
SentencePiece), whose ids are not the checkpoint's tokens (see workdirs).
"""
from moe_jax.hf.model_io import HFSource, export, load

__all__ = ["HFSource", "export", "load"]
