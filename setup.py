"""moe_jax: sparse Mixture-of-Experts models in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="moe_jax",
    version="0.1.0",
    description="Sparse Mixture-of-Experts research code in JAX/Flax: routers, dispatchers, "
                "expert parallelism, training and evaluation.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["moe_jax", "moe_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.7.0",             # jax.shard_map at top level
        "flax>=0.12.4",           # NNX API; Variable out_sharding metadata
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "chex>=0.1.89",
        "ml-collections>=1.0.0",
        "tensorflow-datasets>=4.9.0",
        "importlib_resources",    # tensorflow-datasets imports it without declaring it
        "grain>=0.2.10",
        "numpy>=1.26",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "absl-py>=1.0",           # the CLIs' flags
        "scikit-learn>=1.3",      # the bundled digits dataset and the classification baselines
        "sentencepiece>=0.2.0",   # the trained subword tokenizer (data.tokenizer='sentencepiece')
        "pyarrow>=14",            # parquet corpora (data.corpus='files')
        "tokenizers>=0.15",       # a checkpoint's tokenizer.json (data.tokenizer=PATH.json)
        "safetensors>=0.4",       # Hugging Face checkpoints (moe_jax/hf/safetensors_io.py)
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "nbmake>=1.5", "hypothesis>=6.100",
                "submitit>=1.5"],   # the sweep-as-jobs tests (submitit's local executor)
        "cluster": ["submitit>=1.5"],     # sweeps as SLURM jobs (experiments.run --launcher)
        "tf": ["tensorflow-cpu>=2.16"],   # only to build tfds datasets from source
        "gpu": ["tokamax>=0.0.12"],       # grouped-matmul kernels for dropless on GPU
    },
)
