"""MXFP4 (the OCP Microscaling format GPT-OSS's Hub checkpoints store their experts in), read
with numpy: blocks of 32 values, each a 4-bit E2M1 code, share one power of two.

    w = dequantize(blocks, scales)   # blocks uint8 [..., G, 16], scales uint8 [..., G]
                                     # -> float32 [..., G * 32]

Byte j of a block holds elements 2j (its low 4 bits) and 2j + 1 (its high 4 bits); a code is
sign, 2 exponent bits and 1 mantissa bit (the 16 values of FP4_VALUES); the scale is an
8-bit exponent with bias 127. Every value is exact in float32 and in bfloat16 (but for 6 x 2^127
at scale 0xFE, which overflows); the scale 0xFF stands for NaN in the OCP spec and is refused.
"""
from __future__ import annotations

import numpy as np

FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                       -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)
BLOCK = 32


def dequantize(blocks, scales) -> np.ndarray:
  blocks, scales = np.asarray(blocks), np.asarray(scales)
  if blocks.dtype != np.uint8 or scales.dtype != np.uint8:
    raise ValueError(f"mxfp4: blocks and scales must be uint8, got {blocks.dtype} and "
                     f"{scales.dtype}")
  if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BLOCK // 2:
    raise ValueError(f"mxfp4: blocks {list(blocks.shape)} and scales {list(scales.shape)} "
                     f"do not pair (blocks [..., G, {BLOCK // 2}], scales [..., G])")
  if (scales == 0xFF).any():
    raise ValueError("mxfp4: a scale of 0xFF (NaN in the OCP Microscaling spec): the "
                     "checkpoint's experts are not numbers")
  values = np.empty(blocks.shape[:-1] + (BLOCK,), np.float32)
  values[..., 0::2] = FP4_VALUES[blocks & 0x0F]
  values[..., 1::2] = FP4_VALUES[blocks >> 4]
  np.ldexp(values, scales.astype(np.int32)[..., None] - 127, out=values)   # no second copy
  return values.reshape(*values.shape[:-2], -1)
