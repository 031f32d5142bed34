"""Documents -> fixed-length token sequences, with grain.

Every document is followed by EOS (when the tokenizer has one; text8's
characters have none). `data.packing` decides how documents fill rows:

* `wrap`: documents are concatenated and the stream cut into `data.seq_len`
  tokens (a document may continue in the next row);
* `pad`: one document per row, truncated to `data.seq_len` or padded.

Batches are dicts of numpy arrays:

  tokens       int32 [batch, seq_len]
  weights      float32 [batch, seq_len]: 1 for real tokens, 0 for padding
  segment_ids  int32 [batch, seq_len], only when attention is segmented
               (`pad`, or `wrap` with `data.segment_masking`): 1, 2, ... for
               the documents of a row, 0 for padding; positions attend only
               within their segment.

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

_SHUFFLE_WINDOW = 512  # rows
PACKINGS = ("wrap", "pad")


def _encoded(docs: grain.MapDataset, tokenizer) -> grain.MapDataset:
  eos = np.array([] if tokenizer.eos_id is None else [tokenizer.eos_id], np.int32)
  return docs.map(
      lambda ex: {"tokens": np.concatenate([tokenizer.encode(ex["text"]), eos])})


def _pad(doc: dict, seq_len: int) -> dict:
  tokens = doc["tokens"][:seq_len]
  pad = seq_len - len(tokens)
  return {"tokens": np.pad(tokens, (0, pad)),
          "segment_ids": np.pad(np.ones_like(tokens), (0, pad))}


def segmented_attention(data_config) -> bool:
  """Whether batches carry segment_ids that restrict attention."""
  return data_config.packing == "pad" or data_config.segment_masking


def _rows(docs: grain.MapDataset, data_config) -> grain.IterDataset:
  """Encoded documents -> rows of data.seq_len tokens, by data.packing."""
  if data_config.packing not in PACKINGS:
    raise errors.UserError(
        f"data.packing={data_config.packing!r} is not one of {list(PACKINGS)}")
  seq_len = data_config.seq_len
  if data_config.packing == "pad":
    rows = docs.map(lambda doc: _pad(doc, seq_len)).to_iter_dataset()
  else:
    rows = packing.PackedIterDataset(docs.to_iter_dataset(), seq_len)
  keep_segments = segmented_attention(data_config)

  def finish(row):
    out = {"tokens": row["tokens"],
           "weights": (row["segment_ids"] > 0).astype(np.float32)}
    if keep_segments:
      out["segment_ids"] = row["segment_ids"]
    return out

  return rows.map(finish)


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
  rows = _rows(_encoded(docs, tokenizer), config.data)
  rows = grain.experimental.WindowShuffleIterDataset(
      rows, window_size=_SHUFFLE_WINDOW, seed=config.train.seed)
  return rows.batch(batch, drop_remainder=True)


def pack_split(config, tokenizer, split: str) -> dict[str, np.ndarray]:
  """A whole split as rows in a fixed order: the batch arrays, [N, seq_len] each."""
  docs = grain.MapDataset.source(source(config.data, split))
  rows = list(_rows(_encoded(docs, tokenizer), config.data))
  if not rows:
    raise errors.UserError(f"split {split!r} of data.corpus={config.data.corpus!r} is empty")
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


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
