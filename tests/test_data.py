"""The stdlib and text_files corpora, their splits and the grain pipeline."""

import json

import numpy as np
import pytest

from diffusion_lm import errors
from diffusion_lm.data import builder_base, local_files, pipeline, tokenizers

TOKENIZER = tokenizers.ByteTokenizer()


def test_splits_are_a_stable_hash_partition_near_90_5_5():
  paths = [f"pkg{i % 37}/module_{i}.py" for i in range(4000)]
  splits = local_files.assign_splits(paths)
  assert sorted(sum(splits.values(), [])) == sorted(paths)
  fractions = {k: len(v) / len(paths) for k, v in splits.items()}
  assert fractions["train"] == pytest.approx(0.90, abs=0.02)
  assert fractions["validation"] == pytest.approx(0.05, abs=0.015)
  assert fractions["test"] == pytest.approx(0.05, abs=0.015)
  # Independent of order, and a new file moves no other.
  assert local_files.assign_splits(paths[::-1]) == splits
  grown = local_files.assign_splits(paths + ["new/file.py"])
  for split, members in splits.items():
    assert set(members) <= set(grown[split])


@pytest.mark.parametrize("n", [3, 4, 7, 12])
def test_small_corpora_fill_every_split(n):
  # Bug caught: a split left empty (or a crash) when the hash puts every
  # document of a small corpus in the held-out range.
  for trial in range(300):
    names = [f"doc_{trial}_{i}.txt" for i in range(n)]
    splits = local_files.assign_splits(names)
    assert all(splits[s] for s in builder_base.SPLITS), splits
    assert sorted(sum(splits.values(), [])) == sorted(names)
  # Three documents that all hash into the test range.
  held_out = [p for p in (f"f{i}" for i in range(3000))
              if local_files._hash_fraction(p) >= 0.95][:3]
  splits = local_files.assign_splits(held_out)
  assert all(len(splits[s]) == 1 for s in builder_base.SPLITS)


def test_glob_errors_name_the_glob(tmp_path):
  pattern = str(tmp_path / "*.md")
  with pytest.raises(errors.UserError, match=r"data.files=.*\*\.md.* matches no files"):
    local_files.glob_files(pattern)
  for i in range(2):
    (tmp_path / f"{i}.md").write_text("x")
  with pytest.raises(errors.UserError, match="matches 2 file"):
    local_files.glob_files(pattern)


def test_stdlib_corpus_is_the_standard_library_without_site_packages():
  files = local_files.stdlib_files()
  assert len(files) > 500
  assert all(f.endswith(".py") and "site-packages" not in f for f in files)
  assert "os.py" in files and "json/__init__.py" in files


def test_text_files_builder_partitions_the_documents(tiny_config, corpus_glob):
  root, relpaths = local_files.glob_files(corpus_glob)
  seen = {}
  for split in builder_base.SPLITS:
    for example in pipeline.source(tiny_config.data, split):
      seen[example["path"].decode()] = (split, example["text"])
  assert sorted(seen) == sorted(relpaths)
  for relpath, (_, text) in seen.items():
    assert text == (root / relpath).read_bytes()
  assert {split for split, _ in seen.values()} == set(builder_base.SPLITS)


def test_packed_split_covers_every_token_once(tiny_config):
  # Bug caught: a token lost, repeated or misplaced by packing, or filler
  # that is not EOS (the last row's tail is filler, scored as EOS).
  packed = pipeline.pack_split(tiny_config, TOKENIZER, "train")
  docs = list(pipeline.source(tiny_config.data, "train"))
  expected = np.concatenate(
      [np.append(TOKENIZER.encode(d["text"]), TOKENIZER.eos_id) for d in docs])
  content = packed["content"]
  assert packed["tokens"].shape[1] == tiny_config.data.seq_len
  assert content.sum() == len(expected) and not content[-1].all()
  assert np.all(content[:-1])  # Only the final row has filler.
  np.testing.assert_array_equal(packed["tokens"][content], expected)
  assert np.all(packed["tokens"][~content] == TOKENIZER.eos_id)
  assert np.all(packed["weights"] == 1.0)


def test_eval_batches_split_rows_between_processes(tiny_config):
  packed = pipeline.pack_split(tiny_config, TOKENIZER, "train")
  del packed["content"]
  per_process = [list(pipeline.eval_batches(packed, 8, process_index=p,
                                            process_count=2)) for p in range(2)]
  assert len(per_process[0]) == len(per_process[1]) == -(-len(packed["tokens"]) // 8)
  rows = [np.concatenate([b0["tokens"], b1["tokens"]])
          for b0, b1 in zip(*per_process)]
  weights = [np.concatenate([b0["weights"], b1["weights"]])
             for b0, b1 in zip(*per_process)]
  all_rows = np.concatenate(rows)
  assert np.all(all_rows[:len(packed["tokens"])] == packed["tokens"])
  assert np.concatenate(weights)[len(packed["tokens"]):].sum() == 0


def first_batches(iterator, n):
  return [next(iterator)["tokens"].copy() for _ in range(n)]


def test_train_stream_is_deterministic_and_resumes_from_its_state(tiny_config):
  dataset = pipeline.train_dataset(tiny_config, TOKENIZER)
  a = iter(dataset)
  head = first_batches(a, 3)
  state = a.get_state()
  tail = first_batches(a, 5)
  assert head[0].shape == (tiny_config.train.batch_size, tiny_config.data.seq_len)
  np.testing.assert_array_equal(first_batches(iter(dataset), 3), head)
  b = iter(dataset)
  b.set_state(state)
  np.testing.assert_array_equal(first_batches(b, 5), tail)
  tiny_config.train.seed = 1
  other = first_batches(iter(pipeline.train_dataset(tiny_config, TOKENIZER)), 3)
  assert not np.array_equal(other, head)


def process_iterators(config, process_count: int) -> list:
  return [iter(pipeline.train_dataset(config, TOKENIZER, process_index=p,
                                      process_count=process_count))
          for p in range(process_count)]


def global_batches(iterators, n):
  """The next n global batches' tokens: the processes' rows in order."""
  return [np.concatenate([next(i)["tokens"] for i in iterators])
          for _ in range(n)]


@pytest.mark.parametrize("process_count", [2, 4])
def test_the_global_batch_does_not_depend_on_the_process_count(tiny_config,
                                                               process_count):
  # Bug caught: processes that each read their own share of the documents, or
  # pack or shuffle their rows on their own, so that a job trains on other
  # batches on N hosts than on 1 (so 2 x 2 devices miss 1 x 4's losses).
  one = first_batches(iter(pipeline.train_dataset(tiny_config, TOKENIZER)), 6)
  assert len({row.tobytes() for row in one[0]}) == len(one[0])  # Distinct.
  np.testing.assert_array_equal(
      global_batches(process_iterators(tiny_config, process_count), 6), one)
  with pytest.raises(errors.UserError, match="train.batch_size=8 .* 3 processes"):
    pipeline.train_dataset(tiny_config, TOKENIZER, process_index=0, process_count=3)


def test_process_positions_resume_on_any_process_count(tiny_config):
  # Bugs caught: a stream's position lost or mixed up with another's in the
  # checkpointed state (resumed rows differ), a state that only fits the
  # process count that saved it, or one applied to another batch size.
  tiny_config.data.seq_len = 256  # Streams soon at different places.
  two = process_iterators(tiny_config, 2)
  global_batches(two, 10)
  states = [json.loads(json.dumps(i.get_state())) for i in two]
  positions = [p for state in states for p in state["rows"].values()]
  assert len({json.dumps(p) for p in positions}) > 4
  expected = global_batches(two, 4)
  resumed = process_iterators(tiny_config, 2)
  for iterator, state in zip(resumed, states):
    iterator.set_state(state)
  np.testing.assert_array_equal(global_batches(resumed, 4), expected)
  # Every process count continues from the two positions merged.
  merged = pipeline.merge_positions(states)
  for process_count in (1, 2, 4):
    resumed = process_iterators(tiny_config, process_count)
    for iterator in resumed:
      iterator.set_state(merged)
    np.testing.assert_array_equal(global_batches(resumed, 4), expected)
  for batch_size, rows in ((8, "0-7"), (4, "0-3")):  # The first process's.
    tiny_config.train.batch_size = batch_size
    with pytest.raises(pipeline.PositionMismatch,
                       match=f"rows {rows} of global batches of {batch_size}"):
      iter(pipeline.train_dataset(tiny_config, TOKENIZER)).set_state(states[0])
