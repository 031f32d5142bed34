"""Documents -> fixed-length token sequences, with grain.

Every document is followed by EOS (when the tokenizer has one; text8's
characters have none). `data.packing` decides how documents fill rows:

* `wrap`: documents are concatenated and the stream cut into `data.seq_len`
  tokens (a document may continue in the next row);
* `pad`: one document per row, truncated to `data.seq_len` or filled up.

Rows are dicts of numpy arrays:

  tokens       int32 [seq_len]
  weights      float32 [seq_len]: 1 where the loss scores the position
  segment_ids  int32 [seq_len], only with `data.condition_on_length`: 1, 2, ...
               for the documents of a row, 0 for filler; positions attend
               only within their segment.

Positions after the content (the rest of a pad row; the end of the last wrap
row of a split) are filler. By default the filler is EOS, scored and attended
to like any token: a row is then one sequence whose likelihood includes where
each document ends, and the NELBO bounds -log p(documents). With
`data.condition_on_length` every position is told its document's extent (its
segment), filler is left out of the loss and of attention, and the NELBO
bounds -log p(documents | their lengths) instead. (A tokenizer without EOS
has no filler token: its last wrap row ends in weight-0 padding.)

Training reads an endless stream of global batches of `train.batch_size`
rows. The documents are shuffled, repeated and reshuffled every epoch; row r
of every batch comes from its own packing stream, which reads documents r,
r + B, r + 2B, ... of that order (B = train.batch_size) and packs them on its
own. A process reads the streams of its rows of the global batch, so a step's
batch is the same rows in the same order whatever the number of processes: a
job trains on the same data on 1 or N hosts (and the step's random draws do
not depend on the sharding either). Each stream holds one document at a time;
consecutive rows of a long document land in consecutive batches, never in
one. The iterator's position (every stream's) is checkpointable
(grain.checkpoint.CheckpointSave). Evaluation packs the whole split on every
process in a fixed order and hands each process its rows of every global batch,
so all processes run the same number of steps and every token counts once.
"""

from collections.abc import Iterator

import grain
import numpy as np

from diffusion_lm import errors
from diffusion_lm.data import corpora, packing

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


def _packed(docs: grain.MapDataset, data_config, eos_id: int | None,
            read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
  """Encoded documents -> rows of tokens and segment ids (0 = filler)."""
  if data_config.packing not in PACKINGS:
    raise errors.UserError(
        f"data.packing={data_config.packing!r} is not one of {list(PACKINGS)}")
  if (data_config.packing == "pad" and eos_id is None
      and not data_config.condition_on_length):
    raise errors.UserError(
        "data.packing='pad' fills rows with EOS, which data.tokenizer="
        f"{data_config.tokenizer!r} lacks: use data.packing='wrap' (or "
        "data.condition_on_length=True)")
  seq_len = data_config.seq_len
  if data_config.packing == "pad":
    return docs.map(lambda doc: _pad(doc, seq_len)).to_iter_dataset(read_options)
  return packing.PackedIterDataset(docs.to_iter_dataset(read_options), seq_len)


def finish_row(row: dict, data_config, eos_id: int | None) -> dict:
  """A packed row (tokens, segment ids) as the model reads it (module doc)."""
  content = row["segment_ids"] > 0
  if data_config.condition_on_length:
    return {"tokens": row["tokens"], "weights": content.astype(np.float32),
            "segment_ids": row["segment_ids"]}
  if eos_id is None:  # No filler token: wrap's last row ends in padding.
    return {"tokens": row["tokens"], "weights": content.astype(np.float32)}
  return {"tokens": np.where(content, row["tokens"], eos_id).astype(np.int32),
          "weights": np.ones(content.shape, np.float32)}


def pad_rows(docs: list[np.ndarray], data_config,
             eos_id: int | None) -> dict[str, np.ndarray]:
  """Documents (ids, EOS included), one per row as `data.packing='pad'`
  packs them (with data_config's condition_on_length): [N, seq_len] arrays."""
  rows = [finish_row(_pad({"tokens": d}, data_config.seq_len), data_config,
                     eos_id) for d in docs]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def source(data_config, split: str):
  """The random-access TFDS source of one split (prepared on first use)."""
  return corpora.builder(data_config).as_data_source(split)


def per_process_batch(global_batch: int, process_count: int, field: str) -> int:
  if global_batch % process_count:
    raise errors.UserError(
        f"{field}={global_batch} is not divisible by the {process_count} processes")
  return global_batch // process_count


class PositionMismatch(ValueError):
  """A saved data position that is not one of these batches' (another
  train.batch_size, or another version of this pipeline)."""


# A stream reads its next document when it needs one: no thread, no buffer.
_UNBUFFERED = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def train_dataset(config, tokenizer, *, process_index: int = 0,
                  process_count: int = 1, seed_offset: int = 0
                  ) -> grain.IterDataset:
  """This process's rows of the endless global training batches (module
  doc); iterate with iter() and checkpoint.

  Shuffled with train.seed + seed_offset (a resumed run whose data position
  could not be restored starts a new order).
  """
  global_batch = config.train.batch_size
  batch = per_process_batch(global_batch, process_count, "train.batch_size")
  docs = grain.MapDataset.source(source(config.data, "train"))
  if len(docs) == 0:
    raise errors.UserError(
        f"the train split of data.corpus={config.data.corpus!r} has no "
        "documents")
  order = _encoded(docs.shuffle(seed=config.train.seed + seed_offset).repeat(),
                   tokenizer)
  eos_id = tokenizer.eos_id
  first = process_index * batch
  return _RowStreams({
      row: _packed(order[row::global_batch], config.data, eos_id, _UNBUFFERED
                   ).map(lambda r: finish_row(r, config.data, eos_id))
      for row in range(first, first + batch)}, global_batch)


class _RowStreams(grain.IterDataset):
  """Batches of one row from each stream: {row of the global batch: stream}."""

  def __init__(self, streams: dict[int, grain.IterDataset], global_batch: int):
    super().__init__(list(streams.values()))
    self._rows = list(streams)
    self._global_batch = global_batch

  def __iter__(self):
    return _RowStreamsIterator(
        {row: iter(s) for row, s in zip(self._rows, self._parents)},
        self._global_batch)


class _RowStreamsIterator(grain.DatasetIterator):
  """State: {"batch_size": the global batch, "rows": {"<row>": that row's
  stream's state}}. set_state takes any state that holds this iterator's
  rows, e.g. every process's merged: positions carry over between process
  counts."""

  def __init__(self, streams: dict[int, grain.DatasetIterator],
               global_batch: int):
    super().__init__(list(streams.values()))
    self._streams = streams
    self._global_batch = global_batch

  def __next__(self) -> dict[str, np.ndarray]:
    rows = [next(s) for s in self._streams.values()]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

  def get_state(self) -> dict:
    return {"batch_size": self._global_batch,
            "rows": {str(row): stream.get_state()
                     for row, stream in self._streams.items()}}

  def set_state(self, state: dict) -> None:
    rows = state.get("rows", {})
    if (state.get("batch_size") != self._global_batch
        or any(str(row) not in rows for row in self._streams)):
      raise PositionMismatch(
          f"the data position does not hold rows {min(self._streams)}-"
          f"{max(self._streams)} of global batches of {self._global_batch}")
    for row, stream in self._streams.items():
      stream.set_state(rows[str(row)])


def merge_positions(states: list[dict]) -> dict:
  """The processes' training data positions (their train_dataset iterators'
  states) as one, from which any number of processes resumes."""
  rows = {}
  for state in states:
    rows.update(state.get("rows", {}))
  return {**states[0], "rows": rows}


def pack_split(config, tokenizer, split: str) -> dict[str, np.ndarray]:
  """A whole split as rows in a fixed order: the batch arrays, [N, seq_len]
  each, and `content` (bool [N, seq_len]: the positions that are not filler)."""
  docs = grain.MapDataset.source(source(config.data, split))
  packed = list(_packed(_encoded(docs, tokenizer), config.data,
                        tokenizer.eos_id))
  if not packed:
    raise errors.UserError(
        f"split {split!r} of data.corpus={config.data.corpus!r} is empty")
  rows = [finish_row(r, config.data, tokenizer.eos_id) for r in packed]
  arrays = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  arrays["content"] = np.stack([r["segment_ids"] > 0 for r in packed])
  return arrays


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
