"""Pictures of a run: its learning curves, and one sample being denoised.

  python -m diffusion_lm.plot --workdir=runs/quickstart [--output=PNG] \\
      [--animation=GIF] [--prompt=TEXT] [--seed=N]

writes the curves of the workdir's metrics.jsonl to --output (default
<workdir>/curves.png): the training loss and the validation bound in bits
per token, and bits per byte on validation beside the final evaluation (with
its standard error). With --animation it also samples one sequence from the
workdir's checkpoint (the sampler and options of its config's `sample`
group) and writes how it is filled in: a GIF with a frame for every loop
iteration that committed tokens, and beside it (the same name, .png) a few
of those frames in one picture. Every path may be a gs:// URL.

In a notebook: `curves(records)` is the curves' figure, `live(workdir)`
redraws it under the running cell while training logs, and `animation` and
`storyboard` draw the denoising of a row of a samplers.SampleResult.
"""

import contextlib
import logging as std_logging
import math
import os
import tempfile
import time

import numpy as np
from absl import flags
from absl import logging
from etils import epath

from matplotlib import animation as mpl_animation
from matplotlib import collections
from matplotlib import patches
from matplotlib import pyplot as plt

from diffusion_lm import cli, errors, files, metrics

# ------------------------------------------------------------------ Curves


def _series(records: list[dict], prefix: str, unit: str):
  """(name, steps, values, stderrs) of `prefix/bits_per_unit` (or its
  `_given_length` form) in the records that hold a finite value; None if
  there are none."""
  for name in (f"{prefix}/bits_per_{unit}",
               f"{prefix}/bits_per_{unit}_given_length"):
    rows = [r for r in records if r.get(name) is not None]
    if rows:
      return (name, [r["step"] for r in rows], [r[name] for r in rows],
              [r.get(name + "_stderr") or 0.0 for r in rows])
  return None


def curves(records: list[dict], title: str = ""):
  """The learning curves of metrics.jsonl records, as a matplotlib Figure."""
  fig, (tokens, nbytes) = plt.subplots(1, 2, figsize=(10, 3.6))
  train = [r for r in records if r.get("train/loss") is not None]
  if train:  # Nats per scored position, as bits.
    tokens.plot([r["step"] for r in train],
                [r["train/loss"] / math.log(2) for r in train],
                color="tab:blue", alpha=0.6, label="train (one batch)")
  for axis, unit in ((tokens, "token"), (nbytes, "byte")):
    validation = _series(records, "validation", unit)
    if validation:
      name, steps, values, _ = validation
      axis.plot(steps, values, "o-", color="tab:orange", markersize=4,
                label=name)
    final = _series(records, "eval", unit)
    if final:
      name, steps, values, stderrs = final
      axis.errorbar(steps[-1:], values[-1:], yerr=stderrs[-1:], fmt="s",
                    color="tab:red", label=f"{name} {values[-1]:.3f}")
    axis.set(xlabel="step", ylabel=f"bits per {unit}")
    axis.grid(alpha=0.3)
    if axis.has_data():
      axis.legend(fontsize=8)
  tokens.set_title("loss (upper bounds)", fontsize=10)
  nbytes.set_title("bits per byte", fontsize=10)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def _write(path: str, write_local) -> None:
  """Calls write_local(local_path) to write `path`, through a temporary
  local file when `path` is a URL (gs://)."""
  if not files.is_url(path):
    write_local(path)
    return
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, os.path.basename(path))
    write_local(local)
    epath.Path(path).write_bytes(epath.Path(local).read_bytes())


def save_figure(fig, path: str) -> None:
  """Writes a figure (format from the name's ending) and closes it."""
  _write(path, lambda local: fig.savefig(local, dpi=110))
  plt.close(fig)


class _Redraw(std_logging.Handler):
  """Redraws a workdir's curves, and shows the last progress line, when the
  code logs (at most every `every_s` seconds)."""

  def __init__(self, workdir: str, every_s: float):
    from IPython import display  # pylint: disable=g-import-not-at-top
    super().__init__()
    self.workdir, self.every_s, self._last = workdir, every_s, 0.0
    self._figure = display.display(display.Markdown(
        "*The curves appear at the first logged step.*"), display_id=True)
    self._line = display.display(display.Pretty(""), display_id=True)
    self._pretty = display.Pretty

  def emit(self, record) -> None:
    if f"{os.sep}diffusion_lm{os.sep}" in record.pathname:
      self._line.update(self._pretty(record.getMessage()))
    if time.monotonic() - self._last >= self.every_s:
      self.redraw()

  def redraw(self) -> None:
    self._last = time.monotonic()
    if epath.Path(self.workdir, "metrics.jsonl").exists():
      records = metrics.read_jsonl(self.workdir)
      if records:
        fig = curves(records)
        self._figure.update(fig)
        plt.close(fig)


def _ours_or_warning(record) -> bool:
  return (record.levelno >= std_logging.WARNING
          or f"{os.sep}diffusion_lm{os.sep}" in record.pathname)


@contextlib.contextmanager
def live(workdir: str, every_s: float = 2.0):
  """In a notebook: while the block runs, the curves of `workdir` under the
  cell, redrawn when diffusion_lm logs (training: every train.log_every
  steps and at each evaluation), with the last progress line below them.
  Meanwhile absl logs diffusion_lm's INFO records (so that they are made)
  and other libraries' warnings."""
  handler = _Redraw(workdir, every_s)
  logger, verbosity = logging.get_absl_logger(), logging.get_verbosity()
  logging.set_verbosity(logging.INFO)
  logger.addFilter(_ours_or_warning)
  logger.addHandler(handler)
  try:
    yield
  finally:
    logger.removeHandler(handler)
    logger.removeFilter(_ours_or_warning)
    logging.set_verbosity(verbosity)
    handler.redraw()


# --------------------------------------------------------------- Denoising

# Token states, in the order of _COLORS.
_FIXED, _EARLIER, _NEW, _MASKED = range(4)
_COLORS = ("#cfe2ff", "#f4f4f4", "#ffb347", "#b8b8b8")
_SHOWN = {"<|eos|>": "\u25a0", "\t": "\u21e5", "\r": ""}  # EOS as a square.
_FONT_PT = 10.0
_CHAR_IN, _LINE_IN = 0.6 * _FONT_PT / 72, 1.7 * _FONT_PT / 72  # Monospace.


def _pieces(text: str) -> list[str]:
  """A token's text as it is laid out: a piece per line it spans, each
  newline shown as a final ↵, control characters as �."""
  for old, new in _SHOWN.items():
    text = text.replace(old, new)
  text = "".join(c if c.isprintable() or c == "\n" else "\ufffd" for c in text)
  lines = text.split("\n")
  return [line + "\u21b5" for line in lines[:-1]] + ([lines[-1]] if lines[-1]
                                                      else [])


def layout(tokenizer, tokens_L, columns: int = 64):
  """Where each token's text goes: [(column, line, text), ...] per token, in
  reading order. Text flows left to right, wraps before a token that would
  cross `columns`, and starts a new line after a newline."""
  x = y = 0
  places = []
  for t in np.asarray(tokens_L):
    own = []
    for piece in _pieces(tokenizer.decode([int(t)])) or [" "]:
      piece = piece if len(piece) <= columns else piece[:columns - 1] + "\u2026"
      if x + len(piece) > columns:
        x, y = 0, y + 1
      own.append((x, y, piece))
      x += len(piece)
      if piece.endswith("\u21b5"):
        x, y = 0, y + 1
    places.append(own)
  return places


class _Board:
  """A sample's text on `ax`, a box per token; `show(it)` paints it as it
  stands after loop iteration `it` (-1: before the first)."""

  def __init__(self, ax, places, commit_L, columns: int):
    self.commit_L = np.asarray(commit_L)
    self._owner = [i for i, own in enumerate(places) for _ in own]
    flat = [p for own in places for p in own]
    self._boxes = collections.PatchCollection(
        [patches.Rectangle((x + 0.04, y + 0.08), len(text) - 0.08, 0.84)
         for x, y, text in flat], edgecolor="none")
    ax.add_collection(self._boxes)
    self._texts = [ax.text(x, y + 0.5, text, ha="left", va="center",
                           family="monospace", fontsize=_FONT_PT)
                   for x, y, text in flat]
    ax.set_xlim(0, columns)
    ax.set_ylim(max((y for _, y, _ in flat), default=0) + 1, 0)
    ax.set_axis_off()

  def show(self, it: int) -> list:
    c = self.commit_L
    state = np.select([c < 0, c < it, c == it], [_FIXED, _EARLIER, _NEW],
                      _MASKED)[self._owner]
    self._boxes.set_facecolor([_COLORS[s] for s in state])
    for text, s in zip(self._texts, state):
      text.set_visible(s != _MASKED)
    return [self._boxes, *self._texts]


def _frame_figure(places, columns: int, panels: int = 1):
  """A figure with `panels` text axes of `places`' size, one above another,
  each with room for a title line."""
  lines = max((y for own in places for _, y, _ in own), default=0) + 1
  width, panel = columns * _CHAR_IN + 0.3, (lines + 1.6) * _LINE_IN
  fig = plt.figure(figsize=(width, panels * panel))
  axes = [fig.add_axes((0.15 / width, 1 - (k + 1) * panel / (panels * panel),
                        columns * _CHAR_IN / width,
                        lines * _LINE_IN / (panels * panel)))
          for k in range(panels)]
  return fig, axes


def _caption(commit_L, it: int, calls: int) -> str:
  generated = int(np.sum(commit_L >= 0))
  done = int(np.sum((commit_L >= 0) & (commit_L <= it)))
  return (f"iteration {it + 1}: {int(np.sum(commit_L == it))} committed, "
          f"{done}/{generated} written ({calls} network calls in all)")


def _row(tokenizer, result, row: int, columns: int):
  """(layout, commit steps, network calls) of one row of a SampleResult."""
  return (layout(tokenizer, np.asarray(result.tokens_BxL)[row], columns),
          np.asarray(result.commit_step_BxL)[row],
          int(np.asarray(result.calls_B)[row]))


def animation(tokenizer, result, row: int = 0, columns: int = 64,
              fps: float = 4.0):
  """The denoising of one row of a SampleResult as a matplotlib animation:
  all [MASK] (grey) first, then a frame for each loop iteration that
  committed tokens (orange: committed at that iteration; blue: fixed from
  the start, such as a prompt), holding the last frame a second."""
  places, commit_L, calls = _row(tokenizer, result, row, columns)
  fig, (ax,) = _frame_figure(places, columns)
  board = _Board(ax, places, commit_L, columns)
  title = ax.set_title("", fontsize=_FONT_PT - 1, loc="left")
  iterations = np.unique(commit_L[commit_L >= 0])
  if not len(iterations):
    raise errors.UserError("the sample has no generated tokens to animate "
                           "(the prompt fills the row)")

  def frame(it):
    title.set_text(_caption(commit_L, it, calls) if it >= 0 else "all [MASK]")
    return board.show(it) + [title]

  frames = [-1, *iterations] + [iterations[-1]] * int(fps)
  anim = mpl_animation.FuncAnimation(fig, frame, frames=frames,
                                     interval=1000 / fps)
  plt.close(fig)
  return anim


def save_animation(anim, path: str, fps: float = 4.0) -> None:
  """Writes an animation as a GIF (Pillow)."""
  _write(path, lambda local: anim.save(
      local, writer=mpl_animation.PillowWriter(fps=fps)))


def storyboard(tokenizer, result, row: int = 0, columns: int = 64,
               panels: int = 4):
  """A few frames of `animation` in one figure: the iterations after which
  1/panels, 2/panels, ... of the generated positions were committed."""
  places, commit_L, calls = _row(tokenizer, result, row, columns)
  generated = np.sort(commit_L[commit_L >= 0])
  if not len(generated):
    raise errors.UserError("the sample has no generated tokens to show "
                           "(the prompt fills the row)")
  picks = sorted({int(generated[max(math.ceil(len(generated) * k / panels), 1)
                                 - 1]) for k in range(1, panels + 1)})
  fig, axes = _frame_figure(places, columns, len(picks))
  for ax, it in zip(axes, picks):
    _Board(ax, places, commit_L, columns).show(it)
    ax.set_title(_caption(commit_L, it, calls), fontsize=_FONT_PT - 1,
                 loc="left")
  return fig


# ------------------------------------------------------------ Command line


def _check_output(flag: str, path: str, endings: tuple[str, ...]) -> None:
  """A UserError naming the flag when `path` cannot be written as asked."""
  ending = os.path.splitext(path)[1].lower()
  if ending not in endings:
    raise errors.UserError(f"--{flag}={path}: the name must end in "
                           f"{' or '.join(endings)}")
  parent = os.path.dirname(path) or "."
  if not epath.Path(parent).exists():
    raise errors.UserError(f"--{flag}={path}: the directory {parent} does "
                           "not exist")


def _define_flags() -> None:
  """The command line's flags (defined only when it runs, so that notebooks
  import this module beside the other command lines)."""
  flags.DEFINE_string("workdir", None, "Training workdir to plot.")
  flags.DEFINE_string("output", None, "Where the curves go (.png, .svg or "
                      ".pdf; default <workdir>/curves.png).")
  flags.DEFINE_string("animation", None, "Also sample one sequence and write "
                      "its denoising here (.gif), with a PNG of a few frames "
                      "beside it.")
  flags.DEFINE_string("prompt", "", "--animation: the sample's prompt.")
  flags.DEFINE_integer("seed", 0, "--animation: the sampling seed.")
  flags.mark_flag_as_required("workdir")


def main():
  args = flags.FLAGS
  jsonl = os.path.join(args.workdir, "metrics.jsonl")
  if not epath.Path(jsonl).exists():
    raise errors.UserError(
        f"--workdir={args.workdir} has no metrics.jsonl: train there first "
        f"with python -m diffusion_lm.main --config=... --workdir={args.workdir}")
  output = args.output or os.path.join(args.workdir, "curves.png")
  _check_output("output", output, (".png", ".svg", ".pdf"))
  if args.animation:
    _check_output("animation", args.animation, (".gif",))
  records = metrics.read_jsonl(args.workdir)
  if not records:
    raise errors.UserError(f"{jsonl} holds no records yet: nothing to plot")
  save_figure(curves(records, title=args.workdir), output)
  print(f"Wrote {output}")
  if args.animation:
    from diffusion_lm import api  # pylint: disable=g-import-not-at-top
    lm = api.load(args.workdir)
    result = lm.generate(lm.prompt_template(args.prompt, 1), seed=args.seed)
    save_animation(animation(lm.tokenizer, result), args.animation)
    still = os.path.splitext(args.animation)[0] + ".png"
    save_figure(storyboard(lm.tokenizer, result), still)
    print(f"Wrote {args.animation} and {still}")


if __name__ == "__main__":
  plt.switch_backend("Agg")
  _define_flags()
  cli.run(main)
