"""Every dataset a run can name, embedded or tfds, behind one set of functions of the data config.

    tokenizer = load_or_train_tokenizer(run.data, "pydoc_topics", workdir)  # byte or SentencePiece
    it = lm_train_iterator(run.data, tokenizer, batch_size=b, seed=0)  # or classification_...
    tokens = lm_validation_tokens(run.data, tokenizer)

Names. LM: the embedded corpora (`corpora.corpus_names()`), the tfds LM datasets
(`lm1b`, `tiny_shakespeare`) and `files`, a user's own files (`local_files`). Classification:
the embedded tasks (`digits`, `stdlib_package`) and the tfds ones (`imdb_reviews`,
`ag_news_subset`, `mnist`, `cifar10`). tfds datasets are read from ``data.data_dir`` (see
`tfds_data`); nothing is downloaded.

Token streams. A document becomes its tokens followed by the end-of-document marker: the
SentencePiece ``</s>`` id, or for the byte tokenizer the corpora's blank-line separator
(``corpora.DOC_SEPARATOR``; bytes have no spare id). The embedded corpora with the byte
tokenizer keep exactly their `load_corpus` token arrays. Small LM splits (the embedded corpora,
tiny_shakespeare) are held as one array and cut into shuffled windows (`pipeline`); lm1b streams
shuffled sentences through `packing.PackedWindows`. Either way windows are packed (no padding)
and document boundaries are marked, not masked (see `packing` for why).

Classification examples: images as float32 [H, W, C] in [0, 1]; texts as int32 token ids
truncated or zero-padded to ``data.seq_len`` with ``token_mask`` float32 [L] (1 = real token),
which the classifier's pooling and attention respect.

SentencePiece: with ``data.tokenizer='sentencepiece'`` the tokenizer is trained (offline, in
memory) on the first ``data.tokenizer_train_bytes`` of the training split's text the first time
a run starts, and saved as ``WORKDIR/tokenizer.model``; resumed runs and `evaluate` load it from
there, so a run's tokenizer never changes under it.
"""
from __future__ import annotations

import pathlib
from collections.abc import Iterator

import numpy as np

from moe_jax.data import classification, corpora, local_files, tfds_data
from moe_jax.data.classification import TASK_SHAPES
from moe_jax.data.pipeline import make_iterator
from moe_jax.data.tokenizer import ByteTokenizer

TOKENIZER_FILE = "tokenizer.model"
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")   # a checkpoint's, copied in
TOKENIZER_FILES = (TOKENIZER_FILE, *HF_TOKENIZER_FILES)   # what a workdir keeps of its tokenizer


def is_tokenizer_json(name: str) -> bool:
  """config.data.tokenizer names a Hugging Face tokenizer.json (not 'byte'/'sentencepiece')."""
  return name.endswith(".json")


def lm_names() -> tuple[str, ...]:
  return corpora.corpus_names() + tfds_data.names("lm") + (local_files.NAME,)


def classification_names() -> tuple[str, ...]:
  return tuple(TASK_SHAPES) + tfds_data.names("text") + tfds_data.names("image")


def classification_info(data) -> tuple[str, int, tuple[int, ...]]:
  """(kind, number of classes, one example's input shape) before any data is read."""
  if data.dataset in TASK_SHAPES:
    return TASK_SHAPES[data.dataset]
  spec = tfds_data.spec(data.dataset)
  shape = spec.image_shape if spec.kind == "image" else (data.seq_len,)
  return spec.kind, spec.num_classes, shape


def class_names(data) -> tuple[str, ...]:
  if data.dataset in classification.CLASS_NAMES:
    return classification.CLASS_NAMES[data.dataset]
  return tfds_data.spec(data.dataset).class_names


def _data_dir(data) -> str | None:
  return data.data_dir or None


# ---------------------------------------------------------------- tokenizers

def _documents(name: str, data, split: str) -> Iterator[str]:
  """The texts of one split, in order (LM documents, or classification examples' text)."""
  if name in corpora.corpus_names():
    for _, text in corpora.split_documents(name, split):
      yield text.decode("utf-8")
    return
  if name == local_files.NAME:
    documents = local_files.FileDocuments(data, split)
    for i in range(len(documents)):
      yield documents[i]
    return
  spec = tfds_data.spec(name)
  source = tfds_data.open_split(spec.name, split, _data_dir(data))
  for i in range(len(source)):
    yield tfds_data.example_text(source[i], spec.text_fields)


def _split_name(name: str, which: str) -> str:
  if name in corpora.corpus_names() or name == local_files.NAME:
    return which
  spec = tfds_data.spec(name)
  return spec.train_split if which == "train" else spec.validation_split


def training_text(name: str, data, max_bytes: int) -> Iterator[str]:
  """The training split's texts, in order, up to about `max_bytes` UTF-8 bytes."""
  total = 0
  for text in _documents(name, data, _split_name(name, "train")):
    yield text
    total += len(text.encode("utf-8"))
    if total >= max_bytes:
      return


def load_or_train_tokenizer(data, text_source: str, workdir=None, *, may_train: bool = True):
  """The run's tokenizer: bytes, a tokenizer.json (`hf_tokenizer`; copied into the workdir when
  the run starts, and read from there afterwards), or the SentencePiece model in workdir
  (trained on the text of dataset `text_source` and saved there first when missing and
  `may_train`)."""
  if data.tokenizer == "byte":
    return ByteTokenizer()
  if is_tokenizer_json(data.tokenizer):
    return _load_tokenizer_json(data.tokenizer, workdir, may_train)
  from moe_jax.data.sentencepiece_tokenizer import SentencePieceTokenizer, train_sentencepiece
  path = pathlib.Path(workdir) / TOKENIZER_FILE if workdir is not None else None
  if path is not None and path.exists():
    tokenizer = SentencePieceTokenizer.load(path)
    if tokenizer.vocab_size != data.vocab_size:
      raise ValueError(f"{path} has {tokenizer.vocab_size} tokens but config.data.vocab_size="
                       f"{data.vocab_size}; use the run's own config or a new --workdir")
    return tokenizer
  if not may_train:
    raise FileNotFoundError(f"no tokenizer at {path}: the run's SentencePiece model is saved "
                            "there when training starts")
  text = training_text(text_source, data, data.tokenizer_train_bytes)
  tokenizer = train_sentencepiece(text, data.vocab_size, max_bytes=data.tokenizer_train_bytes)
  if path is not None:
    tokenizer.save(path)
  return tokenizer


def _load_tokenizer_json(name: str, workdir, may_train: bool):
  import shutil
  from moe_jax.data.hf_tokenizer import HFTokenizer
  kept = pathlib.Path(workdir) / HF_TOKENIZER_FILES[0] if workdir is not None else None
  if kept is not None and kept.exists():
    return HFTokenizer.load(kept)
  source = pathlib.Path(name).expanduser()
  if kept is not None and not may_train:
    raise FileNotFoundError(f"no tokenizer at {kept}: the run's tokenizer.json is copied there "
                            "when training starts")
  tokenizer = HFTokenizer.load(source)
  if kept is not None:          # the run keeps its own copy: resumes never depend on `source`
    kept.parent.mkdir(parents=True, exist_ok=True)
    for file in HF_TOKENIZER_FILES:
      if (source.parent / file).is_file():
        shutil.copy2(source.parent / file, kept.parent / file)
  return tokenizer


def _marker(tokenizer) -> np.ndarray:
  if tokenizer.eos_id is None:
    return np.frombuffer(corpora.DOC_SEPARATOR, np.uint8).astype(np.int32)
  return np.array([tokenizer.eos_id], np.int32)


def document_tokens(text: str, tokenizer) -> np.ndarray:
  """The document's tokens followed by the end-of-document marker."""
  return np.concatenate([np.asarray(tokenizer.encode(text), np.int32), _marker(tokenizer)])


def _token_stream(data, tokenizer, split: str, max_tokens: int | None = None) -> np.ndarray:
  """LM tokens of one split: its documents in order, each followed by the marker."""
  if data.corpus in corpora.corpus_names() and tokenizer.eos_id is None:
    return corpora.load_corpus(data.corpus, split)
  parts, total = [], 0
  for text in _documents(data.corpus, data, split):
    parts.append(document_tokens(text, tokenizer))
    total += parts[-1].size
    if max_tokens is not None and total >= max_tokens:
      break
  return np.concatenate(parts)


# ---------------------------------------------------------------- language modelling

def lm_train_iterator(data, tokenizer, *, batch_size: int, seed: int,
                      shard_index: int | None = None, shard_count: int | None = None):
  """Resumable iterator of {'inputs', 'targets'} int32[batch_size, seq_len] training batches."""
  shard = dict(batch_size=batch_size, seed=seed, shard_index=shard_index,
               shard_count=shard_count)
  if data.corpus in tfds_data.DATASETS and not tfds_data.spec(data.corpus).materialize:
    from moe_jax.data.packing import PackedWindows
    spec = tfds_data.spec(data.corpus)
    source = tfds_data.open_split(spec.name, spec.train_split, _data_dir(data))
    return PackedWindows(
        source, lambda ex: document_tokens(tfds_data.example_text(ex, spec.text_fields),
                                           tokenizer), seq_len=data.seq_len, **shard)
  if data.corpus == local_files.NAME:   # streamed: the files need not fit in memory
    from moe_jax.data.packing import PackedWindows
    return PackedWindows(local_files.FileDocuments(data, "train"),
                         lambda text: document_tokens(text, tokenizer), seq_len=data.seq_len,
                         **shard)
  return make_iterator(_token_stream(data, tokenizer, _split_name(data.corpus, "train")),
                       seq_len=data.seq_len, **shard)


def lm_validation_tokens(data, tokenizer) -> np.ndarray:
  """The validation split as one token array (documents in order, marked); with
  data.eval_max_batches only as many documents as those batches need."""
  limit = None
  if data.eval_max_batches:
    limit = data.eval_max_batches * data.eval_batch_size * data.seq_len + 1
  return _token_stream(data, tokenizer, _split_name(data.corpus, "validation"), limit)


def lm_byte_baseline(data, tokenizer, validation_tokens: np.ndarray) -> tuple[float, str]:
  """(bits/byte, what it is) of the context-free byte model a LM must beat."""
  if data.corpus in corpora.corpus_names():
    return (corpora.unigram_entropy_bits(corpora.load_corpus(data.corpus, "train")),
            "unigram entropy of the training bytes")
  text = tokenizer.decode(validation_tokens).encode("utf-8")
  return (corpora.unigram_entropy_bits(np.frombuffer(text, np.uint8)),
          "unigram entropy of the evaluated validation bytes")


# ---------------------------------------------------------------- classification

class TfdsExamples:
  """Random-access source of model-ready examples of a tfds classification split."""

  def __init__(self, data, tokenizer, split: str):
    self._spec = tfds_data.spec(data.dataset)
    self._source = tfds_data.open_split(self._spec.name, split, _data_dir(data))
    self._tokenizer, self._seq_len = tokenizer, data.seq_len

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index) -> dict[str, np.ndarray]:
    example = self._source[index]
    label = np.int32(np.asarray(example["label"]))
    if self._spec.kind == "image":
      image = np.asarray(example["image"], np.float32) / 255.0
      return {"inputs": image.reshape(self._spec.image_shape), "labels": label}
    ids = np.asarray(self._tokenizer.encode(
        tfds_data.example_text(example, self._spec.text_fields)), np.int32)[:self._seq_len]
    inputs = np.zeros(self._seq_len, np.int32)
    inputs[:ids.size] = ids
    mask = np.zeros(self._seq_len, np.float32)
    mask[:ids.size] = 1.0
    return {"inputs": inputs, "token_mask": mask, "labels": label}


def classification_train_iterator(data, tokenizer, *, batch_size: int, seed: int,
                                  shard_index: int | None = None,
                                  shard_count: int | None = None):
  if data.dataset in TASK_SHAPES:
    examples = classification.load_task(data.dataset).train
  else:
    examples = TfdsExamples(data, tokenizer, tfds_data.spec(data.dataset).train_split)
  return classification.make_example_iterator(examples, batch_size=batch_size, seed=seed,
                                              shard_index=shard_index, shard_count=shard_count)


def classification_validation(data, tokenizer) -> dict[str, np.ndarray]:
  """The whole validation split as arrays: inputs, labels (and token_mask for tfds text)."""
  if data.dataset in TASK_SHAPES:
    return classification.load_task(data.dataset).validation
  source = TfdsExamples(data, tokenizer, tfds_data.spec(data.dataset).validation_split)
  examples = [source[i] for i in range(len(source))]
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def classification_baselines(data, validation: dict[str, np.ndarray]) -> dict[str, float]:
  """Embedded tasks: majority class and logistic regression (fit on train). tfds: the
  majority class of the training labels."""
  if data.dataset in TASK_SHAPES:
    return classification.baselines(classification.load_task(data.dataset))
  spec = tfds_data.spec(data.dataset)
  train = tfds_data.open_split(spec.name, spec.train_split, _data_dir(data))
  counts = np.bincount([int(np.asarray(train[i]["label"])) for i in range(len(train))],
                       minlength=spec.num_classes)
  return {"majority": float(np.mean(validation["labels"] == counts.argmax()))}
