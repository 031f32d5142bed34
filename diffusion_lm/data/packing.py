"""Concatenate-then-split packing as a grain transformation.

Documents (1-D token arrays, each already ending in EOS) are read in order,
concatenated and cut into windows of exactly `seq_len` tokens; a document that
does not fit continues in the next window. Each window also carries segment
ids: 1, 2, ... for the document pieces it holds, 0 for padding, which appears
only in the last window of a finite stream.

The iterator's state is the parent's state before the current document plus
an offset into it: plain JSON, so it survives a checkpoint round trip.
"""

import grain
import numpy as np


class PackedIterDataset(grain.IterDataset):

  def __init__(self, parent: grain.IterDataset, seq_len: int):
    super().__init__(parent)
    self._seq_len = seq_len

  def __iter__(self):
    return _PackedIterator(self._parent.__iter__(), self._seq_len)


class _PackedIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, seq_len: int):
    super().__init__(parent)
    self._seq_len = seq_len
    self._doc = np.zeros(0, np.int32)
    self._offset = 0
    self._doc_state = parent.get_state()  # The parent's state before _doc.

  def _read_doc(self) -> None:
    self._doc_state = self._parent.get_state()
    self._doc = next(self._parent)["tokens"]
    self._offset = 0

  def __next__(self) -> dict[str, np.ndarray]:
    tokens = np.zeros(self._seq_len, np.int32)
    segment_ids = np.zeros(self._seq_len, np.int32)
    filled = segment = 0
    while filled < self._seq_len:
      if self._offset == len(self._doc):
        try:
          self._read_doc()
        except StopIteration:
          if filled == 0:
            raise
          break
      take = min(self._seq_len - filled, len(self._doc) - self._offset)
      segment += 1
      tokens[filled:filled + take] = self._doc[self._offset:self._offset + take]
      segment_ids[filled:filled + take] = segment
      filled += take
      self._offset += take
    return {"tokens": tokens, "segment_ids": segment_ids}

  def get_state(self) -> dict:
    return {"parent": self._doc_state, "offset": self._offset}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self._doc_state = state["parent"]
    self._doc = np.zeros(0, np.int32)
    self._offset = 0
    if state["offset"]:
      self._read_doc()
      self._offset = state["offset"]
