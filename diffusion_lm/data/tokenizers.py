"""Tokenizers: text <-> token ids, with the two special ids diffusion needs.

Ids 0 .. vocab_size - 1 are what the model predicts (data tokens and EOS, the
document separator); mask_id = vocab_size is the absorbing [MASK] state, an
input id only. A tokenizer is saved as a small JSON dict (`to_json`) beside
every checkpoint, so sampling decodes with exactly what training used.
"""

from typing import Any, Protocol

import numpy as np

from diffusion_lm import errors


class Tokenizer(Protocol):
  vocab_size: int  # ids the model predicts; [MASK] is not among them
  eos_id: int
  mask_id: int

  def encode(self, text: str | bytes) -> np.ndarray:
    ...

  def decode(self, ids) -> str:
    ...

  def to_json(self) -> dict[str, Any]:
    ...


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255, EOS = 256, [MASK] = 257."""

  vocab_size = 257
  eos_id = 256
  mask_id = 257

  def encode(self, text: str | bytes) -> np.ndarray:
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    """Bytes decoded as UTF-8 (invalid bytes replaced); EOS and [MASK] by name."""
    pieces, run = [], bytearray()
    for i in np.asarray(ids).reshape(-1).tolist():
      if i < 256:
        run.append(i)
        continue
      pieces.append(run.decode("utf-8", errors="replace"))
      pieces.append("<|eos|>" if i == self.eos_id else "<|mask|>")
      run = bytearray()
    pieces.append(run.decode("utf-8", errors="replace"))
    return "".join(pieces)

  def to_json(self) -> dict[str, Any]:
    return {"kind": "byte"}


TOKENIZERS = {"byte": ByteTokenizer}


def from_json(spec: dict[str, Any]) -> Tokenizer:
  """Rebuilds a tokenizer from `to_json()`'s dict."""
  kind = spec.get("kind")
  if kind not in TOKENIZERS:
    raise errors.UserError(
        f"tokenizer kind {kind!r} is not one of {sorted(TOKENIZERS)}")
  args = {k: v for k, v in spec.items() if k != "kind"}
  return TOKENIZERS[kind](**args)


def from_config(data_config) -> Tokenizer:
  """The tokenizer named by `data.tokenizer`."""
  return from_json({"kind": data_config.tokenizer})
