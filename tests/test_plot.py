"""diffusion_lm.plot: learning curves, the denoising animation, its command line."""

import math

import numpy as np
import pytest
from matplotlib import colors
from matplotlib import pyplot as plt
from PIL import Image

from conftest import run_module

from diffusion_lm import plot
from diffusion_lm.data import tokenizers
from diffusion_lm.diffusion import samplers


def test_curves_put_train_loss_in_bits_beside_the_bounds():
  # Bug: train loss (nats) drawn against bounds in bits; a run with
  # data.condition_on_length (_given_length names) drawn empty.
  records = [{"step": 10, "train/loss": math.log(2) * 5},
             {"step": 20, "train/loss": None, "nonfinite": {"train/loss": "nan"}},
             {"step": 20, "validation/bits_per_token_given_length": 4.0,
              "validation/bits_per_byte_given_length": 3.0},
             {"step": 20, "eval/bits_per_byte_given_length": 2.5,
              "eval/bits_per_byte_given_length_stderr": 0.1}]
  fig = plot.curves(records)
  tokens, nbytes = fig.axes
  train, validation = tokens.get_lines()[:2]
  assert list(train.get_ydata()) == pytest.approx([5.0])
  assert list(validation.get_ydata()) == [4.0]
  assert [list(line.get_ydata()) for line in nbytes.get_lines()][0] == [3.0]
  assert "2.500" in " ".join(t.get_text() for t in nbytes.get_legend().get_texts())
  plt.close(fig)


def result_of(commit_L) -> samplers.SampleResult:
  commit = np.array([commit_L])
  return samplers.SampleResult(
      tokens_BxL=np.frombuffer(b"ab\ncdef", np.uint8)[None].astype(np.int32),
      calls_B=np.array([3]), commit_step_BxL=commit,
      length_B=np.array([commit.shape[1]]))


class Pieces:
  """A tokenizer whose ids stand for these texts."""

  def __init__(self, *texts):
    self.texts = texts

  def decode(self, ids):
    return "".join(self.texts[i] for i in ids)


def test_layout_flows_text_wraps_tokens_and_breaks_lines():
  # Bug: a token split across lines, or a newline not starting a new line.
  tokenizer = Pieces("def", " f", "(x", "):\n", "  ret", "<|eos|>")
  assert plot.layout(tokenizer, range(6), columns=6) == [
      [(0, 0, "def")], [(3, 0, " f")], [(0, 1, "(x")], [(2, 1, "):\u21b5")],
      [(0, 2, "  ret")], [(5, 2, "\u25a0")]]
  assert plot.layout(Pieces("a\nb"), [0], columns=6) == [
      [(0, 0, "a\u21b5"), (0, 1, "b")]]


def test_each_frame_shows_exactly_the_tokens_committed_by_then(tmp_path):
  # Bug: a token drawn before its iteration, or the newest not highlighted.
  commit = [-1, 2, 0, 0, 5, 2, 5]  # Position 0 fixed (a prompt).
  tokenizer = tokenizers.ByteTokenizer()
  fig, ax = plt.subplots()
  places = plot.layout(tokenizer, result_of(commit).tokens_BxL[0], columns=4)
  board = plot._Board(ax, places, commit, columns=4)
  new = colors.to_rgba(plot._COLORS[plot._NEW])
  for it in (-1, 0, 2, 5):
    boxes, *texts = board.show(it)
    assert [t.get_visible() for t in texts] == [c <= it for c in commit]
    assert [tuple(fc) == new for fc in boxes.get_facecolor()] == [
        c == it >= 0 for c in commit]
  assert texts[2].get_text() == "\u21b5"  # The newline.
  plt.close(fig)
  anim = plot.animation(tokenizer, result_of(commit), columns=4, fps=2)
  frames = list(anim.new_frame_seq())
  assert frames == [-1, 0, 2, 5, 5, 5]  # All [MASK], each iteration, a hold.
  plot.save_animation(anim, str(tmp_path / "a.gif"), fps=2)
  assert Image.open(tmp_path / "a.gif").n_frames >= 4
  story = plot.storyboard(tokenizer, result_of(commit), columns=4, panels=3)
  assert [a.get_title(loc="left").split(":")[0] for a in story.axes] == [
      "iteration 1", "iteration 3", "iteration 6"]
  plt.close(story)


@pytest.mark.slow
def test_the_command_line_writes_curves_animation_and_storyboard(reference,
                                                                 tmp_path):
  # Bug: the plot command failing on a real workdir, or writing nothing.
  workdir, _ = reference
  run_module("diffusion_lm.plot", f"--workdir={workdir}",
             f"--output={tmp_path}/curves.png",
             f"--animation={tmp_path}/denoising.gif")
  assert Image.open(tmp_path / "curves.png").size[0] > 500
  gif = Image.open(tmp_path / "denoising.gif")
  assert gif.n_frames > 2
  assert Image.open(tmp_path / "denoising.png").size[0] > 300


@pytest.mark.parametrize("flags, message", [
    (["--workdir={empty}"], "has no metrics.jsonl: train there first"),
    (["--workdir={run}", "--output={empty}/curves.txt"], "must end in .png"),
    (["--workdir={run}", "--output={empty}/no/curves.png"], "does not exist"),
    (["--workdir={run}", "--animation={empty}/a.mp4"], "must end in .gif"),
])
def test_bad_input_is_one_line_naming_the_flag(reference, tmp_path, flags,
                                               message):
  # Bug: a traceback, or an error that does not name the flag to fix.
  workdir, _ = reference
  args = [f.format(empty=tmp_path, run=workdir) for f in flags]
  result = run_module("diffusion_lm.plot", *args, check=False)
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: --") and message in last
  assert not list(tmp_path.iterdir())  # Nothing written.
