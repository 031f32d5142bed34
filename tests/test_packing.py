"""Packing: concatenate-then-split (order, segment ids, JSON-safe resume) and
the pipeline's two modes, wrap and pad."""

import json

import grain
import numpy as np
import pytest

from diffusion_lm import errors
from diffusion_lm.data import packing, pipeline, tokenizers

TOKENIZER = tokenizers.ByteTokenizer()

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


def split_documents(config):
  return [np.append(TOKENIZER.encode(ex["text"]), TOKENIZER.eos_id)
          for ex in pipeline.source(config.data, "train")]


def test_pad_mode_fills_rows_with_scored_eos(tiny_config):
  # Bug caught: filler left out of the loss or of attention, which tells the
  # model each document's length for free (a bound on -log p(x | length)).
  docs = split_documents(tiny_config)
  seq_len = int(np.median([len(d) for d in docs]))  # Some truncated, some padded.
  tiny_config.data.update(packing="pad", seq_len=seq_len)
  rows = pipeline.pack_split(tiny_config, TOKENIZER, "train")
  assert len(rows["tokens"]) == len(docs) and "segment_ids" not in rows
  for doc, tokens, weights, content in zip(
      docs, rows["tokens"], rows["weights"], rows["content"]):
    n = min(len(doc), seq_len)
    np.testing.assert_array_equal(tokens[:n], doc[:n])
    np.testing.assert_array_equal(tokens[n:], TOKENIZER.eos_id)
    np.testing.assert_array_equal(weights, 1.0)  # Filler is scored too.
    np.testing.assert_array_equal(content, np.arange(seq_len) < n)


def test_length_conditional_pad_mode_hides_the_filler(tiny_config):
  # Bug caught: condition_on_length not reaching the rows (no segment ids, or
  # filler in the loss), so the `_given_length` numbers would be mislabelled.
  docs = split_documents(tiny_config)
  tiny_config.data.update(packing="pad", seq_len=64, condition_on_length=True)
  rows = pipeline.pack_split(tiny_config, TOKENIZER, "train")
  for doc, weights, segments in zip(docs, rows["weights"], rows["segment_ids"]):
    n = min(len(doc), 64)
    np.testing.assert_array_equal(weights, np.arange(64) < n)
    np.testing.assert_array_equal(segments, weights)  # Filler is segment 0.


def test_pad_mode_needs_eos_unless_length_conditional(tiny_config):
  # Bug caught: a tokenizer without EOS silently filling rows with id 0.
  tiny_config.data.update(packing="pad", tokenizer="char")
  with pytest.raises(errors.UserError, match="data.packing='pad' fills rows "
                     "with EOS, which data.tokenizer='char' lacks"):
    pipeline.pack_split(tiny_config, tokenizers.CharTokenizer(), "train")


def test_wrap_mode_carries_segment_ids_only_when_length_conditional(tiny_config):
  # Bug caught: segment ids (document extents) reaching the default model.
  plain = pipeline.pack_split(tiny_config, TOKENIZER, "train")
  assert "segment_ids" not in plain
  tiny_config.data.condition_on_length = True
  rows = pipeline.pack_split(tiny_config, TOKENIZER, "train")
  content = rows["weights"] > 0
  np.testing.assert_array_equal(rows["tokens"][content], plain["tokens"][content])
  # A new segment starts right after every EOS that is not a row's last token.
  eos = rows["tokens"][:, :-1] == TOKENIZER.eos_id
  steps = np.diff(rows["segment_ids"], axis=1)
  real = content[:, 1:]
  np.testing.assert_array_equal(steps[real] == 1, eos[real])


def test_unknown_packing_is_one_clear_error(tiny_config):
  tiny_config.data.packing = "pack"
  with pytest.raises(errors.UserError, match="data.packing='pack'.*'wrap', 'pad'"):
    pipeline.pack_split(tiny_config, TOKENIZER, "train")
