"""benchmarks/infill.py's task finding and scoring on hand-made files."""

import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
import infill  # pylint: disable=g-import-not-at-top,wrong-import-position

SOURCE = b'''import os


def short(x):
    return x


def three(x):
    y = x + 1
    z = y * 2
    return z


class A:
    def method(self):
        a = 1
        b = 2
        return a + b
'''
BODY_THREE = b"    y = x + 1\n    z = y * 2\n    return z\n"
BODY_METHOD = b"        a = 1\n        b = 2\n        return a + b\n"


def encode_bytes(text):
  return np.frombuffer(text, np.uint8)


# Catches: bodies counted from the def line, a 1-line body taken, a method
# missed (only top-level functions walked), off-by-one line offsets.
def test_functions_are_the_bodies_of_three_to_twenty_lines():
  spans = infill.functions(SOURCE.decode())
  assert sorted(SOURCE[s:e] for s, e in spans) == sorted([BODY_THREE, BODY_METHOD])


# Catches: the fit measured in bytes when the row is in tokens (no body fits
# half of a 128-token row in bytes), or a body that does not fit taken anyway.
def test_a_task_fits_half_a_row_of_tokens():
  rng = np.random.default_rng(0)
  one_token_a_line = lambda text: np.zeros(text.count(b"\n"), np.int32)
  found = infill.tasks(SOURCE, 6, one_token_a_line, rng)  # 3 tokens a body.
  spans = {t["kind"]: [] for t in found}
  for t in found:
    spans[t["kind"]].append(SOURCE[t["start"]:t["end"]])
  assert sorted(spans["body"]) == sorted([BODY_THREE, BODY_METHOD])
  assert [s.count(b"\n") for s in spans["line"]] == [1, 1]
  assert spans["line"][0] in BODY_THREE and spans["line"][1] in BODY_METHOD
  found = infill.tasks(SOURCE, 44, encode_bytes, rng)  # 22 bytes: lines only.
  assert [t["kind"] for t in found] == ["line", "line"]


# Catches: a fill that keeps what follows its EOS, a trivial `pass` at the
# wrong indentation, error bars that ignore the spread over tasks.
def test_fills_end_at_eos_and_trivial_fills_parse():
  assert list(infill.fill_tokens(np.array([5, 6, 2, 7]), eos_id=2)) == [5, 6]
  assert list(infill.fill_tokens(np.array([5, 6]), eos_id=2)) == [5, 6]
  start = SOURCE.index(BODY_THREE)
  indent = len(BODY_THREE) - len(BODY_THREE.lstrip())
  task = {"file": SOURCE, "start": start, "end": start + len(BODY_THREE),
          "indent": indent}
  assert infill.parses(task, infill.trivial_fill(task, "pass"))
  assert not infill.parses(task, infill.trivial_fill(task, "delete"))
  scores = np.array([[[1.0, 0.0, 0.5]] * 2, [[0.0, 0.0, 0.5]] * 2])
  summary = infill.summary(scores)  # 2 tasks x 2 seeds.
  assert summary["parse_rate"] == 0.5
  assert summary["parse_rate_se"] == 0.5 and summary["similarity_se"] == 0


# Catches: the file rebuilt around the wrong offsets.
def test_parses_rebuilds_the_whole_file():
  start = SOURCE.index(BODY_THREE)
  task = {"file": SOURCE, "start": start, "end": start + len(BODY_THREE)}
  assert infill.parses(task, b"    return 0\n")
  assert not infill.parses(task, b"    return (\n")
  assert not infill.parses(task, b"return 0\n")  # Not indented: no body.
