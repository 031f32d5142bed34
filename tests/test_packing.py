"""Concatenate-then-split packing: order, segment ids, JSON-safe resume."""

import json

import grain
import numpy as np

from diffusion_lm.data import packing

DOCS = [np.arange(n, dtype=np.int32) + 100 * n for n in (3, 9, 2, 5, 1)]


def packed(seq_len=4, docs=DOCS):
  source = grain.MapDataset.source(docs).map(lambda d: {"tokens": d})
  return packing.PackedIterDataset(source.to_iter_dataset(), seq_len)


def test_windows_are_the_concatenation_cut_in_order():
  windows = list(packed())
  stream = np.concatenate(DOCS)
  assert all(len(w["tokens"]) == 4 for w in windows)
  real = np.concatenate([w["tokens"][w["segment_ids"] > 0] for w in windows])
  np.testing.assert_array_equal(real, stream)
  assert len(windows) == -(-len(stream) // 4)
  # 20 tokens: no padding at all; segment ids restart at 1 in each window.
  np.testing.assert_array_equal(windows[0]["segment_ids"], [1, 1, 1, 2])
  np.testing.assert_array_equal(windows[3]["segment_ids"], [1, 1, 2, 2])


def test_only_the_last_window_is_padded():
  windows = list(packed(seq_len=6))  # 20 tokens: 3 full windows + 2 tokens.
  np.testing.assert_array_equal(windows[-1]["segment_ids"], [1, 2, 0, 0, 0, 0])
  assert all(np.all(w["segment_ids"] > 0) for w in windows[:-1])


def test_state_survives_a_json_round_trip_at_every_position():
  full = [w["tokens"] for w in packed(seq_len=3)]
  for k in range(len(full)):
    it = iter(packed(seq_len=3))
    for _ in range(k):
      next(it)
    state = json.loads(json.dumps(it.get_state()))
    resumed = iter(packed(seq_len=3))
    resumed.set_state(state)
    rest = [w["tokens"] for w in resumed]
    assert len(rest) == len(full) - k
    for a, b in zip(rest, full[k:]):
      np.testing.assert_array_equal(a, b)
