"""benchmarks/faults.py's own logic on hand-made logs, metrics and files:
how outcomes are told apart, what counts as the same metrics, the damage
done, the case table and its filter. (The matrix itself trains for minutes:
it is run by hand, not here.)"""

import json
import pathlib
import random
import sys

import pytest

from diffusion_lm import errors

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
import faults  # pylint: disable=g-import-not-at-top,wrong-import-position

NEWEST, PREVIOUS = faults.NEWEST, faults.PREVIOUS
NOISE = ("W1204 17:23:48.011767 1404 checkpoint_manager.py:458] "
         "CheckpointManagerOptions.read_only=True, setting max_to_keep=None.")
REASON = (f"The checkpoint at step {NEWEST} in /w/checkpoints cannot be used: "
          "CorruptCheckpoint: params['embed'] differ from their checksums")
CANNOT = f"W1204 17:23:49.000000 1404 checkpoints.py:300] {REASON}"
ORBAX = f"Failed to json parse: /w/checkpoints/{NEWEST}/_CHECKPOINT_METADATA"
UNVERIFIED = (f"WARNING:absl:The checkpoint at step {NEWEST} has no "
              "checksums: it is unverified")
TRACEBACK = """Traceback (most recent call last):
  File "x.py", line 1, in <module>
ValueError: OUT_OF_RANGE: Error reading

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "y.py", line 2, in f
Exception: Encountered error while reading array index: (slice(0, 32, 1),
})>.
"""


def test_outcomes_are_told_apart():
  # Catches: a traceback or a silent load counted as a fallback; noise
  # taken for the warning that names the step.
  def outcome(rc, err, used):
    return faults.restored(faults.Run(rc, "", err), used)

  assert outcome(0, f"{NOISE}\n{CANNOT}\n", PREVIOUS) == ("fell back", REASON)
  assert outcome(0, f"WARNING:absl:{REASON}", PREVIOUS) == ("fell back", REASON)
  assert outcome(0, NOISE, PREVIOUS)[0] == "fell back silently"
  assert outcome(0, f"{CANNOT}\n{TRACEBACK}", PREVIOUS) == (
      "traceback", "ValueError: OUT_OF_RANGE: Error reading")
  assert outcome(0, f"E1204 17:42:29.367675 1402 checkpoint.py:219] {ORBAX}",
                 NEWEST) == ("used the damaged step", ORBAX)
  assert outcome(0, UNVERIFIED, NEWEST)[0] == "loaded unverified"
  assert outcome(0, CANNOT, 4)[0] == "used step 4"
  assert outcome(1, "error: no checkpoint in /w\n", None) == (
      "error line", "error: no checkpoint in /w")
  assert outcome(1, "error: a\nerror: b\n", None)[0] == "exit 1"
  assert outcome(None, "step 3", None) == ("hung", "step 3")


REFERENCE = [{"step": 0, "train/compile_s": 4.5},
             {"step": 1, "train/loss": 4.5, "train/tokens_per_s": 100.0,
              "train/tokens_per_s_per_device": 100.0,
              "train/step_time_s": 1.0},
             {"step": 2, "train/loss": 4.25},
             {"step": 2, "eval/bits_per_token": 5.5}]


def differ(tmp_path, name: str, records) -> str | None:
  ctx = faults.Context(tmp_path, 0, 1, metrics=faults.comparable(REFERENCE))
  workdir = tmp_path / name
  workdir.mkdir()
  (workdir / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in records))
  return faults.metrics_differ(ctx, workdir)


def test_metrics_match_timings_aside(tmp_path):
  # Catches: timings failing every resume; a changed loss, a repeated or a
  # lost record passing.
  assert faults.comparable(REFERENCE) == [
      (1, {"train/loss": 4.5}), (2, {"train/loss": 4.25}),
      (2, {"eval/bits_per_token": 5.5})]
  resumed = [{"step": 0, "train/compile_s": 9.0},
             {**REFERENCE[1], "train/tokens_per_s": 7.0},
             {"step": 2, "train/compile_s": 3.0}, *REFERENCE[2:]]
  assert differ(tmp_path, "resumed", resumed) is None
  changed = [*REFERENCE[:2], {"step": 2, "train/loss": 4.250001}, REFERENCE[3]]
  assert differ(tmp_path, "changed", changed).startswith(
      "step 2: {'train/loss': 4.250001}")
  assert differ(tmp_path, "repeated", [*REFERENCE, REFERENCE[3]]) == (
      "4 records (the reference's: 3)")
  assert differ(tmp_path, "lost", REFERENCE[:3]) == (
      "2 records (the reference's: 3)")


ARRAY = bytes(range(256)) * 4
LARGE = "params/ocdbt.process_0/d/large"
AFTER = {  # mode: (file, its bytes after the damage; None: gone)
    "truncate": (LARGE, ARRAY[:512]),
    "zero": (LARGE, bytes(len(ARRAY))),
    "delete": (LARGE, None),
    "checkpoint_metadata": ("_CHECKPOINT_METADATA", b'{"b"'),
    "config_json": ("config/metadata", b'{"a"'),
    "checksums_json": ("checksums/metadata", b'{"a"'),
    "manifest": ("params/manifest.ocdbt", b"mmmm"),
    "no_params": ("params", None),
    "no_checksums": ("checksums", None),
}


def fake_step(directory: pathlib.Path) -> pathlib.Path:
  files = {LARGE: ARRAY, "params/ocdbt.process_0/d/small": b"s" * 10,
           "params/manifest.ocdbt": b"m" * 8,
           "_CHECKPOINT_METADATA": b'{"b": 2}', "config/metadata": b'{"a": 1}',
           "checksums/metadata": b'{"a": 1}'}
  for name, data in files.items():
    (directory / name).parent.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data)
  return directory


def test_each_damage_does_what_it_says(tmp_path):
  # Catches: a damage that misses its file or leaves it intact (the case
  # would measure nothing), or hits the smaller array file.
  assert set(faults.DAMAGES) == {*AFTER, "flip"}
  for mode, damage in faults.DAMAGES.items():
    step = fake_step(tmp_path / mode)
    damage(step, random.Random(0))
    if mode == "flip":
      flipped = (step / LARGE).read_bytes()
      assert sum(a != b for a, b in zip(flipped, ARRAY)) == 1
    else:
      path, after = step / AFTER[mode][0], AFTER[mode][1]
      assert (path.read_bytes() if path.exists() else None) == after, mode
  path = tmp_path / "flipped"
  path.write_bytes(ARRAY)
  for _ in range(2):
    faults.flip(path, random.Random(3))
  assert path.read_bytes() == ARRAY  # Seeded: the same byte, flipped back.


def test_a_checkpoint_being_written_is_seen_by_its_step(tmp_path):
  # Catches: the mid-save kill firing on another step's write, or never.
  (tmp_path / "checkpoints" / f"12{faults.TMP}-1733").mkdir(parents=True)
  assert faults.saving(tmp_path, 12)()
  assert not faults.saving(tmp_path, 1)()
  assert not faults.saving(tmp_path / "none", 12)()


def test_the_table_and_its_filter():
  # Catches: a mode or path left out of the matrix; --cases running other
  # cases, or none without saying so.
  table = faults.cases()
  names = list(table)
  assert len(names) == len(faults.KILLS) + len(faults.DAMAGES) * len(
      faults.PATHS)
  assert table["damage/no_checksums/eval"][0] == "loaded unverified"
  assert table["damage/flip/train"][0] == "fell back"
  assert table["kill/sigterm_last"][0] == "resumed exactly"
  assert faults.selected(names, "kill/sigkill,damage/zero/load") == [
      "kill/sigkill_startup", "kill/sigkill_1", "kill/sigkill_2",
      "kill/sigkill_3", "kill/sigkill_saving", "damage/zero/load"]
  with pytest.raises(errors.UserError, match="--cases='sigkill_1' matches no"):
    faults.selected(names, "sigkill_1")  # Names start with their kind.
