"""Code infilling on the stdlib corpus's held-out files: what "non-causal" buys.

  python benchmarks/infill.py --diffusion_workdir=runs/quickstart \
      --ar_workdir=runs/quickstart_ar [--seeds=3] [--output=runs/infill.json]

From every test-split file, the functions whose body is 3 to 20 lines give
two tasks: blank the whole body, or one line of it (at random), when the
span fits in half a row (in tokens). Both models get the same row of
data.seq_len tokens: the span and the text around it (as much before it as
after, where the file allows; EOS after the file's end, as the scoring row
has it), and both are told the span's length in tokens:

* diffusion fills the span's positions with the text after it in view
  (--sampler and its options);
* AR reads only the text before it and writes as many tokens as the span
  has.

Each fill ends at its first EOS (stripped). Two trivial fills stand beside
them: `pass` at the span's indentation, and deleting the span. Scores per
fill and task kind: whether the whole file still parses (`ast.parse`),
exact match, and the token-level similarity to the original span
(difflib's ratio: 2 x matched tokens / both lengths), each as a mean over
tasks and --seeds sampling seeds with its standard error over tasks (a
task's score averaged over its seeds, so both sources of noise count);
and the bits each model gives the original span in its window (diffusion:
the NELBO bound with only the span masked, the context in view; AR: the
exact -log2 p of the span given what precedes it).
Prints one JSON line per (fill, task kind) and writes them to --output.
"""

import argparse
import ast
import difflib
import json
import os

import jax
import numpy as np

from diffusion_lm import api, evaluation
from diffusion_lm.data import pipeline


def functions(source: str):
  """(body start, body end) byte offsets of functions with 3-20 line bodies."""
  try:
    tree = ast.parse(source)
  except (SyntaxError, ValueError):
    return []
  starts = np.cumsum([0] + [len(l.encode()) for l in source.splitlines(True)])
  spans = []
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      first, last = node.body[0].lineno, node.end_lineno
      if 3 <= last - first + 1 <= 20:
        spans.append((int(starts[first - 1]), int(starts[last])))
  return spans


def tasks(data: bytes, seq_len: int, encode, rng) -> list[dict]:
  """The infill tasks of one file whose span fits in half a row of seq_len
  tokens (encode: text -> token ids)."""
  source = data.decode("utf-8", errors="replace")
  out = []
  for start, end in functions(source):
    lines = data[start:end].splitlines(True)
    nonblank = [i for i, l in enumerate(lines) if l.strip()]
    i = int(rng.choice(nonblank))
    line_start = start + sum(len(l) for l in lines[:i])
    for kind, (s, e), first in (
        ("body", (start, end), lines[0]),
        ("line", (line_start, line_start + len(lines[i])), lines[i])):
      if len(encode(data[s:e])) <= seq_len // 2:
        out.append({"kind": kind, "file": data, "start": s, "end": e,
                    "indent": len(first) - len(first.lstrip())})
  return out


def pieces(lm, task: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Token ids of the span and of the context around it in one row: the
  span, then as much before it as after it, where the file allows."""
  seq_len, data = lm.config.data.seq_len, task["file"]
  span = lm.tokenizer.encode(data[task["start"]:task["end"]])
  before = lm.tokenizer.encode(data[max(0, task["start"] - 4 * seq_len):
                                    task["start"]])
  after = lm.tokenizer.encode(data[task["end"]:task["end"] + 4 * seq_len])
  room = seq_len - len(span)
  n_after = min(len(after), room - min(len(before), room // 2))
  n_before = min(len(before), room - n_after)
  return before[len(before) - n_before:], span, after[:n_after]


def template(lm, task: dict, causal: bool) -> tuple[np.ndarray, np.ndarray]:
  """(one row of ids, True at the span's positions): the context with the
  span masked and EOS after it up to the row's end; for AR everything from
  the span on is masked (it continues what precedes)."""
  before, span, after = pieces(lm, task)
  seq_len, mask = lm.config.data.seq_len, lm.tokenizer.mask_id
  ids = np.concatenate([before, np.full(len(span), mask), after])
  ids = np.pad(ids, (0, seq_len - len(ids)), constant_values=lm.tokenizer.eos_id)
  position = np.arange(seq_len)
  if causal:
    ids = np.where(position >= len(before), mask, ids)
  at_span = (position >= len(before)) & (position < len(before) + len(span))
  return ids.astype(np.int32), at_span


def fill_tokens(tokens: np.ndarray, eos_id: int) -> np.ndarray:
  """A fill's tokens up to its first EOS."""
  ends = np.flatnonzero(tokens == eos_id)
  return tokens[:ends[0]] if len(ends) else tokens


def fills(lm, batch: list[dict], causal: bool, seed: int, options
          ) -> list[np.ndarray]:
  """Each task's fill, as token ids up to its first EOS."""
  inits = [template(lm, t, causal) for t in batch]
  result = lm.generate(np.stack([i for i, _ in inits]), seed=seed, **options)
  return [fill_tokens(row[at_span], lm.tokenizer.eos_id)
          for (_, at_span), row in zip(inits, np.asarray(result.tokens_BxL))]


def trivial_fill(task: dict, kind: str) -> bytes:
  """`pass` at the span's indentation, or nothing."""
  return b"" if kind == "delete" else b" " * task["indent"] + b"pass\n"


def span_bits(lm, batch: list[dict], num_t_samples: int) -> list[float]:
  """Bits of each original span given its context (module doc)."""
  rows = {"tokens": [], "weights": []}
  for t in batch:
    before, span, after = pieces(lm, t)
    ids = np.concatenate([before, span, after])
    pad = lm.config.data.seq_len - len(ids)
    rows["tokens"].append(np.pad(ids, (0, pad),
                                 constant_values=lm.tokenizer.eos_id))
    rows["weights"].append(np.pad(
        np.repeat([0.0, 1.0, 0.0], [len(before), len(span), len(after)]),
        (0, pad)).astype(np.float32))
  rows = {k: np.stack(v).astype(np.float32 if k == "weights" else np.int32)
          for k, v in rows.items()}
  step = evaluation.make_eval_step(
      lm.graphdef, jax.tree.map(lambda x: x.sharding, lm.params), lm.mesh,
      lm.tokenizer.mask_id, num_t_samples)
  nats = evaluation.nelbos(step, lm.params,
                           pipeline.eval_batches(rows, lm.config.eval.batch_size),
                           lm.mesh, jax.random.PRNGKey(0))
  return list(nats.mean(axis=0)[:len(batch)] / np.log(2))


def parses(task: dict, fill: bytes) -> bool:
  data = task["file"]
  try:
    ast.parse(data[:task["start"]] + fill + data[task["end"]:])
    return True
  except (SyntaxError, ValueError):
    return False


def scores(task: dict, fill: bytes, encode) -> tuple[float, float, float]:
  """(parses, exact match, token similarity) of one fill."""
  original = task["file"][task["start"]:task["end"]]
  similarity = difflib.SequenceMatcher(
      None, list(encode(fill)), list(encode(original)), autojunk=False).ratio()
  return float(parses(task, fill)), float(fill == original), similarity


def summary(per_task_seed: np.ndarray) -> dict:
  """Means of [tasks, seeds, 3] scores, with standard errors over tasks."""
  per_task = per_task_seed.mean(axis=1)
  n = len(per_task)
  se = per_task.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(3)
  names = ("parse_rate", "exact_match", "similarity")
  return {**{k: float(m) for k, m in zip(names, per_task.mean(axis=0))},
          **{f"{k}_se": float(e) for k, e in zip(names, se)}}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--diffusion_workdir", required=True)
  parser.add_argument("--ar_workdir", required=True)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--max_tasks", type=int, default=256)
  parser.add_argument("--sampler", default='{"sampler": "first_hitting"}',
                      help="JSON: the diffusion model's sampler options")
  parser.add_argument("--temperature", type=float, default=1.0)
  parser.add_argument("--output", default="")
  args = parser.parse_args()

  diffusion, ar = api.load(args.diffusion_workdir), api.load(args.ar_workdir)
  seq_len = diffusion.config.data.seq_len
  rng = np.random.default_rng(0)
  all_tasks = []
  for example in pipeline.source(diffusion.config.data, "test"):
    all_tasks += tasks(example["text"], seq_len, diffusion.tokenizer.encode, rng)
  rng.shuffle(all_tasks)
  all_tasks = all_tasks[:args.max_tasks]
  if ar.tokenizer.to_json() != diffusion.tokenizer.to_json():
    raise SystemExit("error: the two workdirs use different tokenizers")
  encode = diffusion.tokenizer.encode
  by_kind = {kind: [t for t in all_tasks if t["kind"] == kind]
             for kind in ("body", "line")}
  results = []

  def report(fill: str, kind: str, per_task_seed, **extra):
    results.append({"fill": fill, "task": kind, "tasks": len(per_task_seed),
                    "seeds": per_task_seed.shape[1],
                    **summary(per_task_seed), **extra})
    print(json.dumps(results[-1]), flush=True)

  for kind, batch in by_kind.items():
    for fill in ("pass", "delete"):
      if batch:
        report(fill, kind, np.array([[scores(t, trivial_fill(t, fill), encode)]
                                     for t in batch]))
  for name, lm, causal, options in (
      ("diffusion", diffusion, False, json.loads(args.sampler)),
      ("ar", ar, True, {})):
    options = dict(options, temperature=args.temperature)
    bits = dict(zip(map(id, all_tasks), span_bits(lm, all_tasks, 16)))
    for kind, batch in by_kind.items():
      if not batch:  # E.g. no function body fits in half a row.
        continue
      per_seed = []
      for seed in range(args.seeds):
        filled = []
        for lo in range(0, len(batch), 32):
          filled += fills(lm, batch[lo:lo + 32], causal, seed, options)
        per_seed.append([scores(t, lm.tokenizer.decode(f).encode(), encode)
                         for t, f in zip(batch, filled)])
      span_bytes = sum(t["end"] - t["start"] for t in batch)
      report(name, kind, np.array(per_seed).transpose(1, 0, 2),
             span_bits_per_byte=float(sum(bits[id(t)] for t in batch)
                                      / span_bytes))
  if args.output:
    with open(args.output + ".tmp", "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)
    os.replace(args.output + ".tmp", args.output)


if __name__ == "__main__":
  main()
