r"""CIFAR-10 (tfds) with an MoE ViT-style classifier on one 8-GPU node (experts over the GPUs).

    python -m moe_jax.train --config configs/classify_cifar10.py --workdir runs/cifar10 \
        --config.data.data_dir=~/tensorflow_datasets
    python -m moe_jax.evaluate --workdir runs/cifar10

Prepare the data once on a machine with internet (docs/data.md, "tfds datasets"):
    pip install -e '.[tf]' && tfds build cifar10 --data_dir ~/tensorflow_datasets --file_format array_record
4x4 patches (64 per image) + a CLS token, 6 layers, d_model 384, 16 experts top-2 in every
other layer (expert_d_ff 768), bfloat16 compute; mesh data=1 x expert=8: each GPU holds 2
experts. 20k steps of 256 images (~100 epochs), no augmentation. Validation: the 10,000-image
test split. Not run on this project's machines (no GPU with the dataset), so no accuracy or
time is claimed: the pipeline is tested on mock CIFAR-10 examples and `tests/test_config.py`
validates and builds this config abstractly. `evaluate`'s class_expert_load.png then shows
whether animal and vehicle classes use different experts.
"""
import common


def get_config():
  c = common.classifier(steps=20000, dataset="cifar10")
  c.log_every = 100
  c.eval_every = 2000
  c.model.update(d_model=384, num_layers=6, num_heads=6, max_len=65, d_ff=1536,
                 num_experts=16, expert_d_ff=768, moe_every=2, first_dense_layers=1,
                 tie_embeddings=False, dtype="bfloat16", param_dtype="float32")
  c.classifier = dict(pool="cls", patch_size=4)
  c.optim.update(learning_rate=1e-3, warmup_steps=1000)
  c.data.update(data_dir="", batch_size=256, eval_batch_size=512)
  c.mesh = dict(data=1, expert=8, model=1)
  c.checkpoint.update(every=2000, async_save=True)
  return c
