"""Fault injection: kill, damage and resume a tiny training run.

  python benchmarks/faults.py --output_dir=runs/faults \
      [--cases=kill,damage/flip] [--seed=0]

Trains a reference run through the real command line (tests/tiny_config.py:
2 layers of width 32, rows of 32 bytes, batches of 8, on text files written
here; 16 steps, the loss logged at every step, a checkpoint every 4, the
newest 2 kept), then runs each case in its own workdir, one at a time. The
commands share compiled programs (JAX's persistent cache, in <output_dir>).

kill/<name>: a fresh run is stopped, then the same command resumes it.
  sigkill_startup SIGKILL at a random time before training began (in the
                  reference run);
  sigkill_1..3    SIGKILL just after a random step's log line;
  sigkill_saving  SIGKILL while a random step's checkpoint is written
                  (checkpoint_every=1);
  sigterm_1..2    SIGTERM just after a random step's log line, in the first
                  half of training;
  sigterm_last    SIGTERM while the last step's checkpoint is written.
  A SIGTERM must end the run with exit status 143 and a checkpoint.
  Expected "resumed exactly": the resumed run's metrics.jsonl (the loss of
  every step, validation, the final evaluation; timings aside) equals the
  reference's.

damage/<mode>/<path>: a copy of the reference, its newest checkpoint damaged,
restored by one path.
  modes: truncate (to half), zero, delete, flip (one byte) the params' largest
  array data file; cut in half the step's _CHECKPOINT_METADATA, its config or
  checksums JSON item, or the params' manifest.ocdbt; remove the params or
  the checksums item.
  paths: train (the reference's command again, which resumes), eval
  (--mode=eval), sample (python -m diffusion_lm.sample), load
  (diffusion_lm.load in a subprocess).
  Expected "fell back": exit status 0, the step before is used and a warning
  names the damaged one; training also moves it to unreadable_checkpoints/
  and ends with the reference's metrics. Without checksums, "loaded
  unverified": the damaged step, with a warning that it is unverified. A
  damaged _CHECKPOINT_METADATA (orbax's own record, not needed to read the
  items, which still pass their checksums): "used the damaged step".

Other outcomes: "traceback" (in stderr), "error line" (one `error: ` line,
exit status 1), "wrong result" (metrics differ from the reference's), "used
the damaged step" (not said to be unverified), "fell back silently" (no
warning or error line names the step), "not moved aside", "hung" (past
--timeout), "exit N" and, for kills, "finished before the signal", "no
checkpoint". Each kill is seeded by --seed and its name, each damage by
--seed and its mode (the same damage on every path), so --cases (names or
prefixes, comma-separated) reruns a subset as it ran.
Prints the report as JSON (per case: name, what was done, the expected and
observed outcome, whether they match, a detail line; totals) and writes it
to <output_dir>/faults.json; each case's workdir and logs stay in
<output_dir>/cases/<name>/.
"""

import argparse
import collections
import dataclasses
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time

from diffusion_lm import errors, files, metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS, CHECKPOINT_EVERY = 16, 4
NEWEST, PREVIOUS = STEPS, STEPS - CHECKPOINT_EVERY  # The kept checkpoints.
OVERRIDES = {"train.steps": STEPS, "train.checkpoint_every": CHECKPOINT_EVERY,
             "train.log_every": 1, "train.eval_every": STEPS,
             "sample.num_samples": 0}
COMPILED = "Compiled the train step"  # Logged when training starts.
RESUMING = r"Resuming from the checkpoint at step (\d+)"
TMP = ".orbax-checkpoint-tmp"  # A checkpoint being written: <step><TMP>...
TIMING = re.compile(r"_s$|_per_s")  # Metrics that vary from run to run.
# The prefix of a warning or an error logged by absl, or by logging's default.
LOGGED = re.compile(r"^(?:[WE]\d{4} \S+ +\d+ \S+\] |(?:WARNING|ERROR):\w+:)")
LOAD = ("import json, sys, diffusion_lm\n"
        "print(json.dumps({'step': diffusion_lm.load(sys.argv[1]).step}))")


@dataclasses.dataclass
class Run:
  """A finished command: exit status (None: hung), stdout, stderr."""
  rc: int | None
  out: str
  err: str


@dataclasses.dataclass
class Context:
  """What every case shares: the corpus and the reference run."""
  output_dir: pathlib.Path
  seed: int
  timeout: float
  files: str = ""
  reference: pathlib.Path | None = None
  metrics: list | None = None  # comparable(reference's metrics.jsonl)
  compiled_at: float = 0.0  # Seconds from the start to training.
  seconds: float = 0.0  # The whole run's.

  @property
  def env(self) -> dict[str, str]:
    """Commands run on the CPU with the package of this checkout, and share
    compiled programs through JAX's persistent cache: the reference run
    fills it, so a killed run never writes to it."""
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
                JAX_COMPILATION_CACHE_DIR=str(self.output_dir / "jax_cache"),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


# ----------------------------------------------------------------- Commands


def write_corpus(directory: pathlib.Path) -> str:
  """A dozen small files of seeded word soup; returns their glob."""
  rng = random.Random(0)
  words = ("def return import class while self print lambda alpha beta "
           "gamma delta").split()
  directory.mkdir(parents=True, exist_ok=True)
  for i in range(12):
    lines = (" ".join(rng.choices(words, k=rng.randint(1, 8)))
             for _ in range(60))
    (directory / f"doc_{i:02d}.txt").write_text("\n".join(lines) + "\n")
  return str(directory / "*.txt")


def config_flags(ctx: Context, **overrides) -> list[str]:
  return [f"--config={REPO / 'tests' / 'tiny_config.py'}",
          f"--config.data.files={ctx.files}",
          f"--config.data.data_dir={ctx.output_dir / 'tfds'}",
          *(f"--config.{k}={v}" for k, v in {**OVERRIDES, **overrides}.items())]


def train_argv(ctx: Context, workdir, **overrides) -> list[str]:
  return [sys.executable, "-m", "diffusion_lm.main",
          *config_flags(ctx, **overrides), f"--workdir={workdir}"]


def launch(ctx: Context, argv: list[str],
           log: pathlib.Path) -> subprocess.Popen:
  """Starts a command; its stdout and stderr go to <log>.stdout/.stderr."""
  with open(f"{log}.stdout", "w") as out, open(f"{log}.stderr", "w") as err:
    return subprocess.Popen(argv, cwd=REPO, env=ctx.env, stdout=out,
                            stderr=err)


def finish(ctx: Context, proc: subprocess.Popen, log: pathlib.Path) -> Run:
  try:
    rc = proc.wait(ctx.timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
    rc = None
  out, err = (pathlib.Path(f"{log}.{kind}").read_text(errors="replace")
              for kind in ("stdout", "stderr"))
  return Run(rc, out, err)


def run(ctx: Context, argv: list[str], log: pathlib.Path) -> Run:
  return finish(ctx, launch(ctx, argv, log), log)


def wait_until(proc: subprocess.Popen, ready, timeout: float) -> bool:
  """Polls ready() until it holds (True), or the process ends or the
  timeout passes (False)."""
  deadline = time.monotonic() + timeout
  while proc.poll() is None and time.monotonic() < deadline:
    if ready():
      return True
    time.sleep(0.005)
  return False


def logged(log: pathlib.Path, text: str):
  """Whether the command's stderr holds `text`."""
  path = pathlib.Path(f"{log}.stderr")
  return lambda: text in path.read_text(errors="replace")


def saving(workdir: pathlib.Path, step: int):
  """Whether the checkpoint of `step` is being written."""
  directory = workdir / "checkpoints"
  return lambda: directory.is_dir() and any(
      p.name.startswith(f"{step}{TMP}") for p in directory.iterdir())


# ----------------------------------------------------------------- Outcomes


def comparable(records: list[dict]) -> list[tuple[int, dict]]:
  """metrics.jsonl's records without timings, in order."""
  kept = [(r["step"], {k: v for k, v in r.items()
                       if k != "step" and not TIMING.search(k)})
          for r in records]
  return [(step, values) for step, values in kept if values]


def metrics_differ(ctx: Context, workdir: pathlib.Path) -> str | None:
  """Where the run's metrics first differ from the reference's (None:
  equal)."""
  try:
    ours = comparable(metrics.read_jsonl(str(workdir)))
  except errors.UserError as e:
    return str(e)
  for record, reference in zip(ours, ctx.metrics):
    if record != reference:
      return (f"step {record[0]}: {record[1]} (the reference's step "
              f"{reference[0]}: {reference[1]})")
  if len(ours) != len(ctx.metrics):
    return f"{len(ours)} records (the reference's: {len(ctx.metrics)})"
  return None


def last_line(text: str) -> str:
  lines = [l for l in text.splitlines() if l.strip()]
  return lines[-1][:300] if lines else ""


def failed(run: Run) -> tuple[str, str] | None:
  """(outcome, detail) of a command that did not end well; None if it did."""
  if run.rc is None:
    return "hung", last_line(run.err)
  if "Traceback" in run.err:  # The first exception's line (a cause).
    frames = run.err.split("Traceback (most recent call last):")[1]
    return "traceback", next((l[:300] for l in frames.splitlines()[1:]
                              if l and not l.startswith(" ")), "")
  errors_printed = [l for l in run.err.splitlines() if l.startswith("error: ")]
  if run.rc == 1 and len(errors_printed) == 1:
    return "error line", errors_printed[0][:300]
  if run.rc != 0:
    return f"exit {run.rc}", last_line(run.err)
  return None


def restored(run: Run, used: int | None) -> tuple[str, str]:
  """(outcome, detail) of restoring a damaged newest checkpoint, `used`
  being the step the command used."""
  if bad := failed(run):
    return bad
  warned = [LOGGED.sub("", l)[:200] for l in run.err.splitlines()
            if LOGGED.match(l) and any(name in l for name in (
                f"step {NEWEST}", f"{os.sep}{NEWEST}{os.sep}", "unverified"))]
  detail = " | ".join(warned)
  if used == PREVIOUS:
    return "fell back" if warned else "fell back silently", detail
  if used == NEWEST:
    unverified = any("unverified" in l for l in warned)
    return ("loaded unverified" if unverified else "used the damaged step",
            detail)
  return f"used step {used}", detail


def step_in(pattern: str, text: str) -> int | None:
  match = re.search(pattern, text, re.MULTILINE)
  return int(match.group(1)) if match else None


# -------------------------------------------------------------- Kill cases


def at_startup(ctx, proc, workdir, log, rng) -> str | None:
  """At a random time before training begins (as it begins at the latest)."""
  start = time.monotonic()
  began = wait_until(proc, logged(log, COMPILED),
                     rng.uniform(0, ctx.compiled_at))
  return (f"at {time.monotonic() - start:.1f} s, "
          + ("as training began" if began else "before training began"))


def at_step(last: int):
  """Up to 0.1 s after the log line of a random step of 1..`last`."""
  def moment(ctx, proc, workdir, log, rng) -> str | None:
    step, delay = rng.randint(1, last), rng.uniform(0, 0.1)
    if not wait_until(proc, logged(log, f"step {step}/{STEPS} "), ctx.timeout):
      return None
    wait_until(proc, lambda: False, delay)
    return f"{delay:.2f} s after step {step} was logged"
  return moment


def during_save(step: int | None):
  """While the checkpoint of `step` (None: a random one) is written."""
  def moment(ctx, proc, workdir, log, rng) -> str | None:
    at = step or rng.randint(2, STEPS - 1)
    if not wait_until(proc, saving(workdir, at), ctx.timeout):
      return None
    return f"while the checkpoint of step {at} was written"
  return moment


KILLS = {  # name: (signal, train.checkpoint_every, moment)
    "sigkill_startup": (signal.SIGKILL, CHECKPOINT_EVERY, at_startup),
    "sigkill_1": (signal.SIGKILL, CHECKPOINT_EVERY, at_step(STEPS - 1)),
    "sigkill_2": (signal.SIGKILL, CHECKPOINT_EVERY, at_step(STEPS - 1)),
    "sigkill_3": (signal.SIGKILL, CHECKPOINT_EVERY, at_step(STEPS - 1)),
    "sigkill_saving": (signal.SIGKILL, 1, during_save(None)),
    # Steps take milliseconds, their log lines come in bursts: a late step's
    # line can come after the loop has ended (sigterm_last's moment).
    "sigterm_1": (signal.SIGTERM, CHECKPOINT_EVERY, at_step(STEPS // 2)),
    "sigterm_2": (signal.SIGTERM, CHECKPOINT_EVERY, at_step(STEPS // 2)),
    "sigterm_last": (signal.SIGTERM, 1, during_save(STEPS)),
}


def kill_case(ctx, case_dir, sig, checkpoint_every, moment):
  """Stops a fresh run at the moment with the signal; resumes it."""
  rng = random.Random(f"{ctx.seed}:{case_dir.name}")
  workdir = case_dir / "workdir"
  argv = train_argv(ctx, workdir,
                    **{"train.checkpoint_every": checkpoint_every})
  proc = launch(ctx, argv, case_dir / "stopped")
  when = moment(ctx, proc, workdir, case_dir / "stopped", rng)
  if proc.poll() is not None or when is None:
    first = finish(ctx, proc, case_dir / "stopped")
    return (f"{sig.name} never sent", *(failed(first) or (
        "finished before the signal", f"exit {first.rc}")))
  proc.send_signal(sig)
  first = finish(ctx, proc, case_dir / "stopped")
  did = (f"{sig.name} {when} (checkpoint_every={checkpoint_every}): exit "
         f"{first.rc}")
  if sig == signal.SIGTERM:
    if first.rc != 143:
      return did, *(failed(first) or (f"exit {first.rc}", "SIGTERM ignored"))
    if not any(p.name.isdigit() for p in (workdir / "checkpoints").glob("*")):
      return did, "no checkpoint", ""
  did += "; then the same command"
  resumed = run(ctx, argv, case_dir / "resumed")
  if bad := failed(resumed):
    return did, *bad
  if differ := metrics_differ(ctx, workdir):
    return did, "wrong result", differ
  step = step_in(RESUMING, resumed.err)
  return did, "resumed exactly", f"from step {step}" if step else "afresh"


# ------------------------------------------------------------ Damage cases


def array_file(step_dir: pathlib.Path) -> pathlib.Path:
  """The params' largest array data file (ties by name)."""
  files = (step_dir / "params" / "ocdbt.process_0" / "d").iterdir()
  return max(files, key=lambda p: (p.stat().st_size, p.name))


def cut_in_half(path: pathlib.Path) -> str:
  size = path.stat().st_size
  os.truncate(path, size // 2)
  return f"cut {path.name} to {size // 2} of {size} bytes"


def zero(path: pathlib.Path) -> str:
  path.write_bytes(bytes(path.stat().st_size))
  return f"zeroed {path.name}"


def delete(path: pathlib.Path) -> str:
  if path.is_dir():
    shutil.rmtree(path)
  else:
    path.unlink()
  return f"deleted {path.name}"


def flip(path: pathlib.Path, rng: random.Random) -> str:
  data = bytearray(path.read_bytes())
  at = rng.randrange(len(data))
  data[at] ^= 0xFF
  path.write_bytes(data)
  return f"flipped byte {at} of {len(data)} in {path.name}"


DAMAGES = {  # mode: damage(newest step's directory, rng) -> what was done
    "truncate": lambda d, rng: cut_in_half(array_file(d)),
    "zero": lambda d, rng: zero(array_file(d)),
    "delete": lambda d, rng: delete(array_file(d)),
    "flip": lambda d, rng: flip(array_file(d), rng),
    "checkpoint_metadata": lambda d, rng: cut_in_half(
        d / "_CHECKPOINT_METADATA"),
    "config_json": lambda d, rng: "config/: " + cut_in_half(
        d / "config" / "metadata"),
    "checksums_json": lambda d, rng: "checksums/: " + cut_in_half(
        d / "checksums" / "metadata"),
    "manifest": lambda d, rng: "params/: " + cut_in_half(
        d / "params" / "manifest.ocdbt"),
    "no_params": lambda d, rng: delete(d / "params"),
    "no_checksums": lambda d, rng: delete(d / "checksums"),
}


def by_training(ctx, workdir, case_dir) -> tuple[str, str]:
  result = run(ctx, train_argv(ctx, workdir), case_dir / "train")
  outcome = restored(result, step_in(RESUMING, result.err))
  if outcome[0] == "fell back" and not (
      workdir / "unreadable_checkpoints" / str(NEWEST)).exists():
    return "not moved aside", outcome[1]
  if outcome[0] in ("fell back", "loaded unverified") and (
      differ := metrics_differ(ctx, workdir)):
    return "wrong result", differ
  return outcome


def by_eval(ctx, workdir, case_dir) -> tuple[str, str]:
  result = run(ctx, [sys.executable, "-m", "diffusion_lm.main",
                     *config_flags(ctx), f"--workdir={workdir}", "--mode=eval"],
               case_dir / "eval")
  path = workdir / "eval_test.json"
  return restored(result, json.loads(path.read_text())["step"]
                  if path.exists() else None)


def by_sample(ctx, workdir, case_dir) -> tuple[str, str]:
  result = run(ctx, [sys.executable, "-m", "diffusion_lm.sample",
                     f"--workdir={workdir}", "--num_samples=1"],
               case_dir / "sample")
  return restored(result, step_in(r"^--- sample 0 \(step (\d+)\) ---",
                                  result.out))


def by_load(ctx, workdir, case_dir) -> tuple[str, str]:
  result = run(ctx, [sys.executable, "-c", LOAD, str(workdir)],
               case_dir / "load")
  return restored(result, step_in(r'^\{"step": (\d+)\}$', result.out))


PATHS = {"train": by_training, "eval": by_eval, "sample": by_sample,
         "load": by_load}


def damage_case(ctx, case_dir, mode, path):
  """Damages the newest checkpoint of a copy of the reference (the same
  way for every path); restores it."""
  workdir = case_dir / "workdir"
  shutil.copytree(ctx.reference, workdir)
  did = DAMAGES[mode](workdir / "checkpoints" / str(NEWEST),
                      random.Random(f"{ctx.seed}:{mode}"))
  return f"step {NEWEST}: {did}; then {path}", *PATHS[path](
      ctx, workdir, case_dir)


# -------------------------------------------------------------------- Main


# Damage that leaves the step usable. Orbax's own _CHECKPOINT_METADATA is not
# needed to read the items, whose arrays and JSON still pass their checksums.
EXPECTED = {"no_checksums": "loaded unverified",
            "checkpoint_metadata": "used the damaged step"}


def cases() -> dict:
  """name: (expected outcome, run(ctx, case_dir) -> (did, observed,
  detail))."""
  table = {f"kill/{name}": ("resumed exactly",
                            lambda c, d, k=kill: kill_case(c, d, *k))
           for name, kill in KILLS.items()}
  for mode in DAMAGES:
    for path in PATHS:
      expected = EXPECTED.get(mode, "fell back")
      table[f"damage/{mode}/{path}"] = (
          expected, lambda c, d, m=mode, p=path: damage_case(c, d, m, p))
  return table


def train_reference(ctx: Context) -> None:
  """The uninterrupted run: its metrics and when its training began."""
  directory = ctx.output_dir / "reference"
  shutil.rmtree(directory, ignore_errors=True)
  directory.mkdir(parents=True)
  workdir, log = directory / "workdir", directory / "train"
  start = time.monotonic()
  proc = launch(ctx, train_argv(ctx, workdir), log)
  compiled = wait_until(proc, logged(log, COMPILED), ctx.timeout)
  ctx.compiled_at = time.monotonic() - start
  result = finish(ctx, proc, log)
  if result.rc != 0 or not compiled:
    raise errors.UserError(f"the reference run failed (exit {result.rc}): "
                           f"{last_line(result.err)}; see {log}.stderr")
  ctx.reference = workdir
  ctx.metrics = comparable(metrics.read_jsonl(str(ctx.reference)))
  ctx.seconds = time.monotonic() - start


def selected(names, patterns: str) -> list[str]:
  """The names that start with one of the comma-separated patterns."""
  prefixes = [p.strip() for p in patterns.split(",") if p.strip()]
  chosen = [n for n in names if any(n.startswith(p) for p in prefixes)]
  if not chosen:
    raise errors.UserError(f"--cases={patterns!r} matches no case; the cases "
                           f"are {', '.join(names)}")
  return chosen


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--cases", default="kill,damage",
                      help="Names or prefixes of cases, comma-separated.")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--timeout", type=float, default=300,
                      help="Seconds one command may run.")
  args = parser.parse_args()
  table = cases()
  names = selected(list(table), args.cases)
  ctx = Context(pathlib.Path(args.output_dir).resolve(), args.seed,
                args.timeout)
  ctx.files = write_corpus(ctx.output_dir / "corpus")
  began = time.monotonic()
  train_reference(ctx)
  results = []
  for name in names:
    case_dir = ctx.output_dir / "cases" / name
    shutil.rmtree(case_dir, ignore_errors=True)
    case_dir.mkdir(parents=True)
    expected, case = table[name]
    start = time.monotonic()
    did, observed, detail = case(ctx, case_dir)
    results.append({"name": name, "did": did, "expected": expected,
                    "observed": observed, "passed": observed == expected,
                    "detail": detail,
                    "seconds": round(time.monotonic() - start, 1)})
    print(f"{'ok  ' if observed == expected else 'FAIL'} {name}: {observed}",
          file=sys.stderr, flush=True)
  failing = [r["name"] for r in results if not r["passed"]]
  report = {
      "seed": args.seed, "config": "tests/tiny_config.py",
      "overrides": OVERRIDES, "reference_seconds": round(ctx.seconds, 1),
      "cases": results,
      "totals": {"cases": len(results), "passed": len(results) - len(failing),
                 "failed": len(failing), "seconds": round(
                     time.monotonic() - began),
                 "observed": dict(collections.Counter(
                     r["observed"] for r in results)),
                 "failing": failing}}
  text = json.dumps(report, indent=2)
  files.write_atomically(str(ctx.output_dir / "faults.json"), text + "\n")
  print(text)


if __name__ == "__main__":
  try:
    main()
  except errors.UserError as e:
    sys.exit(f"error: {e}")
