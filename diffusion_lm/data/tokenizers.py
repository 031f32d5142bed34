"""Tokenizers: text <-> token ids, with the two special ids diffusion needs.

Ids 0 .. vocab_size - 1 are what the model predicts (data tokens and, where
the tokenizer has one, EOS, the document separator); mask_id = vocab_size is
the absorbing [MASK] state, an input id only. `token_bytes[i]` is how many
UTF-8 bytes of the original text id i stands for (0 for EOS and other
specials), so that for any text a tokenizer encodes

  token_bytes[encode(text)].sum() == len(text.encode("utf-8"))

and bits per byte are exact. A tokenizer is saved as a small self-contained
JSON dict (`to_json`) beside every checkpoint, so sampling decodes with exactly
what training used.

* `byte`: UTF-8 bytes, EOS = 256.
* `char`: text8's 27 symbols (space, a-z); no EOS (documents are concatenated
  with nothing between them). Any other character is an error
  (`check_documents` finds the first in a corpus before a run starts).
* `sentencepiece`: a SentencePiece model (`data.tokenizer_model`), trained
  with `python -m diffusion_lm.train_tokenizer`.
"""

import base64
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from diffusion_lm import errors

_EOS_TEXT = "<|eos|>"
_MASK_TEXT = "<|mask|>"
_TRAIN_COMMAND = ("python -m diffusion_lm.train_tokenizer --config=CONFIG "
                  "--vocab_size=32000")
_CHAR_ALPHABET = ("text8's alphabet is space and a-z (use "
                  "data.tokenizer='byte' for other text)")


class Tokenizer:
  """The contract every tokenizer keeps (see the module docstring)."""

  kind: str  # Its name in TOKENIZERS and `data.tokenizer`.
  vocab_size: int  # Ids the model predicts; [MASK] is not among them.
  eos_id: int | None  # None: documents are concatenated without a separator.
  mask_id: int  # == vocab_size.
  token_bytes: np.ndarray  # int64 [vocab_size]: UTF-8 bytes each id stands for.

  def encode(self, text: str | bytes) -> np.ndarray:
    """int32 ids of `text` (no EOS added)."""
    raise NotImplementedError

  def _decode_run(self, ids: np.ndarray) -> str:
    """Text of ids that are neither EOS nor [MASK]."""
    raise NotImplementedError

  def decode(self, ids) -> str:
    """Text of `ids`, with EOS and [MASK] shown as <|eos|> and <|mask|>.

    Ids outside 0..mask_id are an error.
    """
    ids = np.asarray(ids, np.int64).reshape(-1)
    bad = ids[(ids < 0) | (ids > self.mask_id)]
    if bad.size:
      raise errors.UserError(
          f"token id {bad[0]} is outside 0..{self.mask_id} (the vocabulary "
          "and [MASK])")
    names = {self.mask_id: _MASK_TEXT}
    if self.eos_id is not None:
      names[self.eos_id] = _EOS_TEXT
    pieces, start = [], 0
    for i in np.flatnonzero(np.isin(ids, list(names))):
      pieces += [self._decode_run(ids[start:i]), names[int(ids[i])]]
      start = i + 1
    pieces.append(self._decode_run(ids[start:]))
    return "".join(pieces)

  def to_json(self) -> dict[str, Any]:
    """A JSON-serialisable dict that `from_json` rebuilds this tokenizer from."""
    return {"kind": self.kind}

  @classmethod
  def from_json(cls, spec: dict[str, Any]) -> "Tokenizer":
    del spec  # Only the kind.
    return cls()


def _utf8(text: str | bytes) -> bytes:
  return text.encode("utf-8") if isinstance(text, str) else bytes(text)


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes as ids 0..255, EOS = 256, [MASK] = 257.

  Decoding replaces invalid UTF-8 with U+FFFD.
  """

  kind = "byte"
  vocab_size = 257
  eos_id = 256
  mask_id = 257
  token_bytes = np.array([1] * 256 + [0], np.int64)

  def encode(self, text: str | bytes) -> np.ndarray:
    return np.frombuffer(_utf8(text), dtype=np.uint8).astype(np.int32)

  def _decode_run(self, ids: np.ndarray) -> str:
    return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def _char_at(data: bytes, i: int) -> str:
  """The character that starts at byte i (U+FFFD: not UTF-8)."""
  return data[i:i + 4].decode("utf-8", errors="replace")[0]


class CharTokenizer(Tokenizer):
  """text8's alphabet: space = 0, a..z = 1..26; no EOS; [MASK] = 27.

  Every id is one byte (one character). Encoding text with any other
  character raises a UserError naming the first one and its position.
  """

  kind = "char"
  ALPHABET = " abcdefghijklmnopqrstuvwxyz"
  vocab_size = 27
  eos_id = None
  mask_id = 27
  token_bytes = np.ones(27, np.int64)
  _IDS = np.full(256, -1, np.int32)  # Byte -> id, -1 outside the alphabet.
  _IDS[np.frombuffer(ALPHABET.encode(), np.uint8)] = np.arange(27)

  def lookup(self, data: bytes) -> tuple[np.ndarray, int | None]:
    """The ids of `data` (-1 outside the alphabet) and the offset of its
    first byte outside the alphabet (None: there is none). The bytes before
    that one are ASCII: the offset is also a character index."""
    ids = self._IDS[np.frombuffer(data, np.uint8)]
    bad = np.flatnonzero(ids < 0)
    return ids, int(bad[0]) if bad.size else None

  def encode(self, text: str | bytes) -> np.ndarray:
    data = _utf8(text)
    ids, i = self.lookup(data)
    if i is not None:
      raise errors.UserError(
          f"the char tokenizer cannot encode {_char_at(data, i)!r} at "
          f"character {i}: {_CHAR_ALPHABET}")
    return ids

  def _decode_run(self, ids: np.ndarray) -> str:
    return "".join(self.ALPHABET[i] for i in ids)


_META_SPACE = "\u2581"  # SentencePiece's '▁': a space in the text.


def _inexact_settings(proto: bytes) -> list[str]:
  """Settings under which token_bytes would not count the input's UTF-8 bytes."""
  model = sentencepiece_model_pb2.ModelProto.FromString(proto)
  norm, trainer = model.normalizer_spec, model.trainer_spec
  reasons = []
  if norm.precompiled_charsmap:
    reasons.append(f"normalization {norm.name!r}")
  if norm.add_dummy_prefix:
    reasons.append("add_dummy_prefix")
  if norm.remove_extra_whitespaces:
    reasons.append("remove_extra_whitespaces")
  if trainer.model_type == trainer.WORD and trainer.byte_fallback:
    reasons.append("a word model with byte fallback (it spells '▁' as 3 bytes)")
  return reasons


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model; EOS is the model's EOS piece, [MASK] = vocab_size.

  token_bytes: a piece's UTF-8 bytes with '▁' counted as one space; a
  byte-fallback piece <0xNN> is 1 byte; control pieces (EOS) and the unknown
  piece count 0. Models with byte fallback (as train_tokenizer trains them)
  never produce the unknown piece; without it, characters outside the
  vocabulary become the unknown piece and are not counted. Bytes that are not
  valid UTF-8 are encoded as byte-fallback pieces. Models that change the text
  before encoding (normalization, dummy prefix, whitespace removal) are
  refused: their counts would not be the input's bytes. As everywhere in
  SentencePiece, a literal '▁' (U+2581) in the text reads as a space.
  """

  kind = "sentencepiece"

  def __init__(self, model_proto: bytes, name: str = "the sentencepiece model"):
    """`model_proto`: a serialized ModelProto (a .model file's contents)."""
    try:
      self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    except RuntimeError:
      raise errors.UserError(f"{name} is not a sentencepiece model") from None
    inexact = _inexact_settings(model_proto)
    if inexact:
      raise errors.UserError(
          f"{name} does not keep the text's bytes ({', '.join(inexact)}), so "
          f"bits per byte would be wrong; train one with {_TRAIN_COMMAND}")
    if self._sp.eos_id() < 0:
      raise errors.UserError(
          f"{name} has no EOS piece to separate documents; train one with "
          f"{_TRAIN_COMMAND}")
    self.model_proto = model_proto
    self.vocab_size = self._sp.get_piece_size()
    self.eos_id = self._sp.eos_id()
    self.mask_id = self.vocab_size
    self.token_bytes = np.array(
        [self._piece_bytes(i) for i in range(self.vocab_size)], np.int64)
    # Byte -> its byte-fallback piece (<unk> in models without byte fallback).
    self._byte_ids = np.array(
        [self._sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)], np.int32)

  def _piece_bytes(self, i: int) -> int:
    if self._sp.is_byte(i):
      return 1
    if self._sp.is_control(i) or self._sp.is_unknown(i):
      return 0
    return len(self._sp.id_to_piece(i).replace(_META_SPACE, " ").encode("utf-8"))

  @classmethod
  def from_file(cls, path: str) -> "SentencePieceTokenizer":
    with open(path, "rb") as f:
      return cls(f.read(), name=path)

  def encode(self, text: str | bytes) -> np.ndarray:
    """Ids of the text; invalid UTF-8 bytes become byte pieces, one each."""
    if isinstance(text, str):
      return np.array(self._sp.encode(text), np.int32)
    data, parts = bytes(text), []
    while True:
      try:
        parts.append(self._sp.encode(data.decode("utf-8")))
        return np.array(np.concatenate(parts), np.int32)
      except UnicodeDecodeError as e:
        parts.append(self._sp.encode(data[:e.start].decode("utf-8")))
        parts.append(self._byte_ids[list(data[e.start:e.end])])
        data = data[e.end:]

  def _decode_run(self, ids: np.ndarray) -> str:
    return self._sp.decode(ids.tolist())

  def to_json(self) -> dict[str, Any]:
    """The model itself, base64-encoded: no file needed to rebuild it."""
    return {"kind": self.kind,
            "model_proto": base64.b64encode(self.model_proto).decode("ascii")}

  @classmethod
  def from_json(cls, spec: dict[str, Any]) -> "SentencePieceTokenizer":
    return cls(base64.b64decode(spec["model_proto"]))


TOKENIZERS = {t.kind: t for t in (ByteTokenizer, CharTokenizer,
                                  SentencePieceTokenizer)}


def check_documents(tokenizer: Tokenizer,
                    documents: Iterable[tuple[str, bytes]]) -> None:
  """Refuses (location, text) documents that `tokenizer` cannot encode,
  naming the first such document and byte, so that a run is refused before
  it trains. Only the char tokenizer refuses text: for the others the
  documents are not read."""
  if not isinstance(tokenizer, CharTokenizer):
    return
  for location, text in documents:
    _, i = tokenizer.lookup(text)
    if i is not None:
      raise errors.UserError(
          f"the char tokenizer cannot encode {_char_at(text, i)!r} (byte "
          f"0x{text[i]:02x}) at byte {i} of {location}: {_CHAR_ALPHABET}")


def from_json(spec: dict[str, Any]) -> Tokenizer:
  """Rebuilds a tokenizer from `to_json()`'s dict."""
  kind = spec.get("kind")
  if kind not in TOKENIZERS:
    raise errors.UserError(
        f"tokenizer kind {kind!r} is not one of {sorted(TOKENIZERS)}")
  return TOKENIZERS[kind].from_json(spec)


def from_config(data_config, corpus_dir: str) -> Tokenizer:
  """The tokenizer named by `data.tokenizer` (and `data.tokenizer_model`).

  A relative `data.tokenizer_model` is read from `corpus_dir`, the corpus's
  prepared data directory (corpora.prepared_dir: known without preparing).
  """
  kind, model = data_config.tokenizer, data_config.tokenizer_model
  if kind not in TOKENIZERS:
    raise errors.UserError(
        f"data.tokenizer={kind!r} is not one of {sorted(TOKENIZERS)}")
  if kind != SentencePieceTokenizer.kind:
    if model:
      raise errors.UserError(
          f"data.tokenizer_model={model!r} is only read by "
          f"data.tokenizer='sentencepiece', not {kind!r}")
    return TOKENIZERS[kind]()
  if not model:
    raise errors.UserError(
        "data.tokenizer='sentencepiece' needs data.tokenizer_model (a .model "
        "file, absolute or relative to the corpus's prepared data directory); "
        f"train one with {_TRAIN_COMMAND}")
  path = os.path.join(corpus_dir, os.path.expanduser(model))
  if not os.path.isfile(path):
    raise errors.UserError(
        f"data.tokenizer_model={model!r}: no file {path}; train one with "
        f"{_TRAIN_COMMAND} (it prints the override to use)")
  return SentencePieceTokenizer.from_file(path)
