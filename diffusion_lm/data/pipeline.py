"""Documents -> packed, fixed-length token sequences, with grain.

Packing concatenates documents, each followed by EOS, and cuts the stream into
`data.seq_len` tokens. Batches are dicts of numpy arrays:

  tokens   int32 [batch, seq_len]
  weights  float32 [batch, seq_len]: 1 for real tokens, 0 for padding

Training reads an endless, shuffled stream: documents reshuffled every epoch
and packed sequences shuffled again in a window. Each process reads its own
slice of the documents; the iterator's position is checkpointable
(grain.checkpoint.CheckpointSave). Evaluation packs the whole split on every
process in a fixed order and hands each process its rows of every global batch,
so all processes run the same number of steps and every token counts once.
"""

from collections.abc import Iterator

import grain
import numpy as np

from diffusion_lm import errors
from diffusion_lm.data import corpora, packing

_SHUFFLE_WINDOW = 512  # packed sequences


def _encoded(docs: grain.MapDataset, tokenizer) -> grain.MapDataset:
  eos = np.array([tokenizer.eos_id], np.int32)
  return docs.map(
      lambda ex: {"tokens": np.concatenate([tokenizer.encode(ex["text"]), eos])})


def _packed(docs: grain.MapDataset, seq_len: int) -> grain.IterDataset:
  return packing.PackedIterDataset(docs.to_iter_dataset(), seq_len).map(
      lambda ex: {"tokens": ex["tokens"],
                  "weights": (ex["segment_ids"] > 0).astype(np.float32)})


def source(data_config, split: str):
  """The random-access TFDS source of one split (prepared on first use)."""
  return corpora.builder(data_config).as_data_source(split)


def per_process_batch(global_batch: int, process_count: int, field: str) -> int:
  if global_batch % process_count:
    raise errors.UserError(
        f"{field}={global_batch} is not divisible by the {process_count} processes")
  return global_batch // process_count


def train_dataset(config, tokenizer, *, process_index: int = 0,
                  process_count: int = 1) -> grain.IterDataset:
  """Endless per-process training batches; iterate with iter() and checkpoint."""
  batch = per_process_batch(config.train.batch_size, process_count,
                            "train.batch_size")
  docs = grain.MapDataset.source(source(config.data, "train"))
  docs = docs[process_index::process_count]
  if len(docs) == 0:
    raise errors.UserError(
        f"process {process_index} of {process_count} has no training documents")
  docs = docs.shuffle(seed=config.train.seed).repeat()
  packed = _packed(_encoded(docs, tokenizer), config.data.seq_len)
  packed = grain.experimental.WindowShuffleIterDataset(
      packed, window_size=_SHUFFLE_WINDOW, seed=config.train.seed)
  return packed.batch(batch, drop_remainder=True)


def pack_split(config, tokenizer, split: str) -> dict[str, np.ndarray]:
  """A whole split packed in a fixed order: tokens and weights [N, seq_len]."""
  docs = grain.MapDataset.source(source(config.data, split))
  seqs = list(_packed(_encoded(docs, tokenizer), config.data.seq_len))
  if not seqs:
    raise errors.UserError(f"split {split!r} of data.corpus={config.data.corpus!r} is empty")
  return {k: np.stack([s[k] for s in seqs]) for k in ("tokens", "weights")}


def eval_batches(packed: dict[str, np.ndarray], global_batch: int, *,
                 process_index: int = 0, process_count: int = 1
                 ) -> Iterator[dict[str, np.ndarray]]:
  """This process's rows of every global batch covering `packed` exactly once.

  The last global batch is filled up with weight-0 rows.
  """
  rows = per_process_batch(global_batch, process_count, "eval.batch_size")
  n = len(packed["tokens"])
  num_batches = -(-n // global_batch)
  for b in range(num_batches):
    lo = b * global_batch + process_index * rows
    batch = {k: v[lo:lo + rows] for k, v in packed.items()}
    pad = rows - len(batch["tokens"])
    if pad:
      batch = {k: np.pad(v, ((0, pad), (0, 0))) for k, v in batch.items()}
    yield batch


def split_num_bytes(data_config, split: str) -> int:
  """Bytes of text in a split: the denominator of bits per byte."""
  return sum(len(ex["text"]) for ex in source(data_config, split))
