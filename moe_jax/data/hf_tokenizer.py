"""A checkpoint's own tokenizer: a Hugging Face `tokenizer.json`, read with the `tokenizers` library.

    tok = HFTokenizer.load("path/to/tokenizer.json")
    ids = tok.encode("def f(x):")          # int32, no special tokens added
    tok.decode(ids), tok.eos_id, tok.bytes_per_token[ids].sum()

`tokenizers` is the Rust library transformers' fast tokenizers wrap (no torch, no network), so the
ids are the model's own: `tests/data/test_hf_tokenizer.py` checks them against the ids
transformers gave on unicode, whitespace runs and code (`tests/fixtures/hf/make_fixtures.py`).

End of document: the tokenizer's EOS token, named by the `tokenizer_config.json` beside the file
(`eos_token`, as transformers reads it), else the first of the usual EOS spellings the vocabulary
has; a tokenizer with neither is refused, naming the file.

Bytes per token (bits per byte, as for SentencePiece): what each id covers of the UTF-8 text.
Byte-level BPE (GPT-2, OLMoE, Qwen, DeepSeek, Llama 3) writes every byte as one character of
GPT-2's byte alphabet, so a token's bytes are its characters mapped back: exact, so
``bytes_per_token[encode(s)].sum() == len(s.encode())``. SentencePiece-style tokenizers
(Mixtral, Llama 2: `▁` for a space, `<0xNN>` byte-fallback pieces) count `▁` as one byte and a
byte piece as one; their added prefix space makes a document count one byte more than it has.
Special tokens (BOS, EOS, chat markers) cover no text: 0 bytes (a special token's spelling
inside a document is read as that token, as transformers reads it, and counts 0 bytes too).
"""
from __future__ import annotations

import functools
import json
import os
import pathlib
import re

import numpy as np

TOKENIZER_JSON = "tokenizer.json"
CONFIG_JSON = "tokenizer_config.json"
# Spellings of the end-of-text token in the families moe_jax imports, tried in order when no
# tokenizer_config.json names it.
EOS_SPELLINGS = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<｜end▁of▁sentence｜>", "<eos>")
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@functools.lru_cache(maxsize=1)
def _byte_alphabet() -> dict[str, int]:
  """GPT-2's byte-level alphabet, inverted: character -> the byte it stands for (printable
  bytes stand for themselves; the others are shifted past 255, in order)."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  chars, shifted = {}, 0
  for b in range(256):
    if b in printable:
      chars[chr(b)] = b
    else:
      chars[chr(256 + shifted)] = b
      shifted += 1
  return chars


def _mentions(node, name: str) -> bool:
  """Whether a tokenizer.json component (or a Sequence of them) has type `name`."""
  if isinstance(node, dict):
    return node.get("type") == name or any(_mentions(v, name) for v in node.values())
  if isinstance(node, list):
    return any(_mentions(v, name) for v in node)
  return False


class HFTokenizer:
  """A `tokenizers.Tokenizer` with moe_jax's tokenizer interface (encode, decode, eos_id,
  vocab_size, bytes_per_token)."""

  def __init__(self, tokenizer, eos_id: int, path: pathlib.Path | None = None):
    self._tok, self._eos_id, self.path = tokenizer, int(eos_id), path
    spec = json.loads(tokenizer.to_str())
    self._byte_level = _mentions(spec.get("pre_tokenizer"), "ByteLevel") or \
        _mentions(spec.get("decoder"), "ByteLevel")
    self._special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    self._bytes_per_token = self._bytes_table()
    self._bytes_per_token.setflags(write=False)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "HFTokenizer":
    """The tokenizer in `path` (a tokenizer.json, or a directory holding one)."""
    path = pathlib.Path(path)
    if path.is_dir():
      path = path / TOKENIZER_JSON
    if not path.is_file():
      raise FileNotFoundError(2, "No such tokenizer file", str(path))
    try:
      from tokenizers import Tokenizer
    except ImportError:
      raise ValueError("a tokenizer.json needs the tokenizers package: pip install "
                       "'tokenizers>=0.15'") from None
    try:
      tok = Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 -- the Rust library's errors have no common type
      raise ValueError(f"{path} is not a tokenizer.json the tokenizers library can read: "
                       f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return cls(tok, _eos_id(tok, path), path)

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  @property
  def eos_id(self) -> int:
    return self._eos_id

  @property
  def bytes_per_token(self) -> np.ndarray:
    """int64 [vocab_size]: the UTF-8 bytes of text each id covers (see the module doc)."""
    return self._bytes_per_token

  def encode(self, text: str) -> np.ndarray:
    if not isinstance(text, str):
      raise ValueError(f"HFTokenizer.encode: 'text' must be a str, got {type(text).__name__}")
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

  def decode(self, ids) -> str:
    ids = np.asarray(ids)
    if ids.size and ((ids < 0).any() or (ids >= self.vocab_size).any()):
      raise ValueError(f"HFTokenizer.decode: 'ids' must lie in [0, {self.vocab_size}), got "
                       f"values in [{int(ids.min())}, {int(ids.max())}]")
    return self._tok.decode([int(i) for i in ids.ravel()], skip_special_tokens=False)

  def token_bytes(self, token_id: int) -> int:
    if token_id in self._special:
      return 0
    piece = self._tok.id_to_token(token_id)
    if piece is None:
      return 0
    if self._byte_level:
      alphabet = _byte_alphabet()
      if all(c in alphabet for c in piece):
        return len(piece)
      return len(piece.encode("utf-8"))     # an added token written as plain text
    if _BYTE_PIECE.match(piece):
      return 1
    return len(piece.replace("▁", " ").encode("utf-8"))

  def _bytes_table(self) -> np.ndarray:
    return np.array([self.token_bytes(i) for i in range(self.vocab_size)], np.int64)

  def to_str(self) -> str:
    return self._tok.to_str()

  def __repr__(self) -> str:
    return f"HFTokenizer({self.path}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def _eos_id(tok, path: pathlib.Path) -> int:
  config = path.parent / CONFIG_JSON
  named = None
  if config.is_file():
    try:
      named = json.loads(config.read_text()).get("eos_token")
    except ValueError:
      raise ValueError(f"{config} is not valid JSON") from None
    if isinstance(named, dict):
      named = named.get("content")
  for spelling in ([named] if named else []) + list(EOS_SPELLINGS):
    token_id = tok.token_to_id(spelling)
    if token_id is not None:
      return token_id
    if spelling == named:
      raise ValueError(f"{config} names eos_token {named!r}, which {path} does not have")
  raise ValueError(f"cannot tell the end-of-document token of {path}: none of "
                   f"{', '.join(EOS_SPELLINGS)} is in its vocabulary; put a {CONFIG_JSON} "
                   "naming eos_token beside it")
