"""The registry of corpora: `data.corpus` -> its TFDS builder, prepared or not.

* `stdlib`, `text_files` (local_files.py): local files, one document each.
* `markov` (markov.py): documents from a random Markov chain whose entropy is
  known exactly.
* `text8` (text8.py), `lm1b` (lm1b.py), `openwebtext` (openwebtext.py): the
  public benchmarks, downloaded (or taken from a TFDS manual dir).

`builder` prepares the corpora without downloads on first use; the others
are prepared once with `python -m diffusion_lm.prepare` (`prepare`), and
`builder` refuses them unprepared (errors.NotPrepared).
"""

import sys

from etils import epath
import jax
from jax.experimental import multihost_utils
import tensorflow_datasets as tfds

from diffusion_lm import errors, files
from diffusion_lm.data import lm1b, local_files, markov, openwebtext, text8
from diffusion_lm.data.builder_base import SPLITS, DocumentBuilder

CORPORA = {
    "stdlib": lambda data_config, **kw: local_files.Stdlib(**kw),
    "text_files": local_files.text_files_builder,
    "markov": lambda data_config, **kw: markov.Markov(
        config=markov.MarkovConfig(data_config.markov), **kw),
    "text8": lambda data_config, **kw: text8.Text8(**kw),
    "lm1b": lambda data_config, **kw: lm1b.Lm1b(**kw),
    "openwebtext": lambda data_config, **kw: openwebtext.OpenWebText(
        config=openwebtext.OpenWebTextConfig(data_config.validation_documents),
        **kw),
}

# OpenWebText holds out its last documents as validation and has no test split.
_SPLITS = {"openwebtext": ("train", "validation")}


def splits(corpus: str) -> tuple[str, ...]:
  """The splits `data.corpus` has (eval.split must be one of them)."""
  return _SPLITS.get(corpus, SPLITS)


def make_builder(data_config) -> DocumentBuilder:
  """The builder for `data.corpus` (in `data.data_dir`), prepared or not."""
  if data_config.corpus not in CORPORA:
    raise errors.UserError(
        f"data.corpus={data_config.corpus!r} is not one of {sorted(CORPORA)}")
  return CORPORA[data_config.corpus](
      data_config, data_dir=data_config.data_dir or None,
      file_format="array_record")


def prepared_dir(data_config) -> str:
  """Where `data.corpus` is (or will be) prepared; prepares nothing."""
  return str(make_builder(data_config).data_dir)


def _download_and_prepare(b: DocumentBuilder, **kwargs) -> None:
  """b.download_and_prepare, once data.data_dir is known to be writable;
  TFDS's progress bars only on a terminal (not in a log file or a test's
  output)."""
  files.check_writable_dir(str(b.data_dir_root), "data.data_dir")
  if not sys.stderr.isatty():
    tfds.disable_progress_bar()
  b.download_and_prepare(**kwargs)


def builder(data_config) -> DocumentBuilder:
  """The prepared builder for `data.corpus`.

  Corpora without downloads are prepared here on first use; the others raise
  errors.NotPrepared until `prepare` has run. In a multi-process job (every
  process calls this alike) process 0 prepares first while the others wait:
  two processes writing one shared data dir collide. A process whose data
  dir is on a disk of its own then prepares its own copy.
  """
  b = make_builder(data_config)
  if b.DOWNLOADS:
    if not b.is_prepared():
      raise errors.NotPrepared(data_config.corpus, str(b.data_dir_root))
    return b
  if jax.process_count() > 1:
    if jax.process_index() == 0 and not b.is_prepared():
      _download_and_prepare(b)
    multihost_utils.sync_global_devices("diffusion_lm: corpus prepared")
    b = make_builder(data_config)  # Sees what process 0 wrote.
  if not b.is_prepared():
    _download_and_prepare(b)
  return b


def prepare(data_config, manual_dir: str | None = None) -> DocumentBuilder:
  """Downloads (or reads from `manual_dir`) and prepares `data.corpus`."""
  manual_path = epath.Path(manual_dir).expanduser() if manual_dir else None
  if manual_path and not manual_path.is_dir():
    raise errors.UserError(f"--manual_dir={manual_dir!r} is not a directory")
  b = make_builder(data_config)
  _download_and_prepare(
      b, download_config=tfds.download.DownloadConfig(manual_dir=manual_path))
  return b
