"""Code infilling on the stdlib corpus's held-out files: what "non-causal" buys.

  python benchmarks/infill.py --diffusion_workdir=runs/quickstart \
      --ar_workdir=runs/quickstart_ar [--seeds=3] [--output=runs/infill.json]

From every test-split file, the functions whose body is 3 to 20 lines give
two tasks: blank the whole body, or one line of it (at random), when the
span fits in half a row (in tokens). Each model sees one row of
data.seq_len tokens: the span and the text around it (as much before it as
after, where the file allows):

* diffusion fills the span, of its original length in tokens, with the text
  after it in view (--sampler and its options);
* AR sees only the text before it and writes to the end of the row; its fill
  ends where the line ends (one-line task) or a line comes back to the
  function's own indentation (body task), or at EOS.

Scores, per model and task, over --seeds sampling seeds: the fraction of
files that still parse (`ast.parse` of the whole file with the fill), the
exact-match rate, and the bits each model gives the original span in its
window (diffusion: the NELBO bound with only the span masked, the context
in view; AR: the exact -log2 p of the span given what precedes it).
Prints one JSON line per (model, task) and a summary.
"""

import argparse
import ast
import json
import os
import statistics

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
    indent = len(lines[0]) - len(lines[0].lstrip())
    for kind, (s, e) in (("body", (start, end)),
                         ("line", (line_start, line_start + len(lines[i])))):
      if len(encode(data[s:e])) <= seq_len // 2:
        out.append({"kind": kind, "file": data, "start": s, "end": e,
                    "indent": indent})
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
  """(one row of ids with the span masked, True where the model writes):
  the span (diffusion), or everything from it on (AR: nothing after it)."""
  before, span, after = pieces(lm, task)
  mask = lm.tokenizer.mask_id
  ids = np.concatenate([before, np.full(len(span), mask), after]).astype(np.int32)
  writes = np.arange(len(ids)) >= len(before)
  if causal:
    ids = np.where(writes, mask, ids)
  else:
    writes &= np.arange(len(ids)) < len(before) + len(span)
  pad = lm.config.data.seq_len - len(ids)
  return (np.pad(ids, (0, pad), constant_values=mask),
          np.pad(writes, (0, pad), constant_values=causal))


def ar_cut(text: str, task: dict) -> str:
  """The AR continuation up to the end of the span it writes."""
  text = text.split("<|eos|>")[0]
  if task["kind"] == "line":
    return text.split("\n")[0] + "\n" if "\n" in text else text
  kept = []
  for line in text.splitlines(True):
    if kept and line.strip() and len(line) - len(line.lstrip()) < task["indent"]:
      break  # Back to the function's own level (or out of it).
    kept.append(line)
  return "".join(kept)


def fills(lm, batch: list[dict], causal: bool, seed: int, options) -> list[str]:
  inits = [template(lm, t, causal) for t in batch]
  init = np.stack([i for i, _ in inits])
  result = lm.generate(init, seed=seed, **options)
  tokens = np.asarray(result.tokens_BxL)
  out = []
  for t, (_, span), row in zip(batch, inits, tokens):
    text = lm.tokenizer.decode(row[span])
    out.append(ar_cut(text, t) if causal else text)
  return out


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


def parses(task: dict, fill: str) -> bool:
  data = task["file"]
  try:
    ast.parse(data[:task["start"]] + fill.encode() + data[task["end"]:])
    return True
  except (SyntaxError, ValueError):
    return False


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
  results = []
  for name, lm, causal, options in (
      ("diffusion", diffusion, False, json.loads(args.sampler)),
      ("ar", ar, True, {})):
    options = dict(options, temperature=args.temperature)
    bits = span_bits(lm, all_tasks, 16)
    for kind in ("body", "line"):
      chosen = [i for i, t in enumerate(all_tasks) if t["kind"] == kind]
      batch = [all_tasks[i] for i in chosen]
      if not batch:  # E.g. no function body fits in half a row.
        print(json.dumps({"model": name, "task": kind, "tasks": 0}), flush=True)
        continue
      per_seed = []
      for seed in range(args.seeds):
        filled = []
        for lo in range(0, len(batch), 32):
          filled += fills(lm, batch[lo:lo + 32], causal, seed, options)
        per_seed.append((
            float(np.mean([parses(t, f) for t, f in zip(batch, filled)])),
            float(np.mean([f.encode() == t["file"][t["start"]:t["end"]]
                           for t, f in zip(batch, filled)]))))
      parse, exact = zip(*per_seed)
      span_bytes = sum(t["end"] - t["start"] for t in batch)
      results.append({
          "model": name, "task": kind, "tasks": len(batch), "seeds": args.seeds,
          "parse_rate": statistics.mean(parse),
          "parse_rate_sd": statistics.pstdev(parse),
          "exact_match": statistics.mean(exact),
          "exact_match_sd": statistics.pstdev(exact),
          "span_bits_per_byte": float(sum(bits[i] for i in chosen) / span_bytes)})
      print(json.dumps(results[-1]), flush=True)
  if args.output:
    with open(args.output + ".tmp", "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)
    os.replace(args.output + ".tmp", args.output)


if __name__ == "__main__":
  main()
