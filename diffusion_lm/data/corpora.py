"""Text corpora as TensorFlow Datasets builders (array_record; no TensorFlow).

Every corpus is a set of documents with features `text` (the raw bytes) and
`path` (a stable identifier of the document), in the splits its builder's
docstring gives. `CORPORA` maps `data.corpus` to its builder:

* `stdlib`: the .py files of the standard library of the Python running this
  code (site-packages left out); one builder config per Python version.
* `text_files`: the files matched by a glob (`data.files`); the config name is
  a hash of the glob and of the matched files' paths, sizes and mtimes, so an
  edited corpus is prepared afresh.
* `markov` (markov.py): documents from a random Markov chain whose entropy is
  known exactly.
* `text8` (text8.py), `lm1b` (lm1b.py), `openwebtext` (openwebtext.py): the
  public benchmarks, downloaded (or taken from a TFDS manual dir).

stdlib and text_files hold one document per file, split by a stable hash of
its path into train / validation / test (about 90 / 5 / 5). `builder`
prepares stdlib, text_files and markov on first use; the downloads are
prepared once with `python -m diffusion_lm.data.prepare` (`prepare`), and
`builder` refuses them unprepared with the command that prepares them.
"""

from collections.abc import Iterator
import fnmatch
import glob as glob_lib
import hashlib
import os
import pathlib
import platform
import sysconfig
import tarfile
from typing import BinaryIO

from etils import epath
import tensorflow_datasets as tfds

from diffusion_lm import errors

SPLITS = ("train", "validation", "test")
_HELD_OUT_FRACTION = {"validation": 0.05, "test": 0.05}


def _hash_fraction(relpath: str) -> float:
  """A stable number in [0, 1) from a path (the same on every machine)."""
  digest = hashlib.sha256(relpath.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_splits(relpaths: list[str]) -> dict[str, list[str]]:
  """Splits documents by path hash: [0, .9) train, [.9, .95) validation, rest test.

  With 3 or more documents, validation and test each get at least one: when
  the hash leaves one empty, the train documents of highest hash move there.
  """
  ranked = sorted(relpaths, key=_hash_fraction)
  val_start = 1.0 - _HELD_OUT_FRACTION["validation"] - _HELD_OUT_FRACTION["test"]
  test_start = 1.0 - _HELD_OUT_FRACTION["test"]
  splits = {s: [] for s in SPLITS}
  for path in ranked:
    h = _hash_fraction(path)
    split = "train" if h < val_start else "validation" if h < test_start else "test"
    splits[split].append(path)
  if len(ranked) >= 3:
    for split in ("test", "validation"):
      if not splits[split]:
        splits[split].append(splits["train"].pop())
  return splits


class DocumentBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Documents with features `text` and `path` (a stable document identifier).

  Subclasses may set DOWNLOADS (prepared by `python -m diffusion_lm.data.prepare`,
  not on first use), ORDERED (each split keeps the order in which its
  documents are generated, instead of TFDS's shuffle by key) and return
  metadata. Our builders are made from their classes, never looked up by name,
  so they stay out of TFDS's registry (where TFDS's own lm1b would clash).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  DOWNLOADS = False
  ORDERED = False

  def _metadata(self) -> tfds.core.MetadataDict | None:
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "path": tfds.features.Text(),
        }),
        disable_shuffling=self.ORDERED,
        metadata=self._metadata(),
    )


def manual_files(dl_manager, pattern: str, *,
                 recursive: bool = False) -> list[epath.Path]:
  """The files in the TFDS manual dir (or anywhere below it) whose names match
  a glob, sorted; none when the manual dir is absent or empty."""
  try:
    manual_dir = dl_manager.manual_dir
  except AssertionError:  # TFDS's way to say it does not exist or is empty.
    return []
  if not recursive:
    return sorted(p for p in manual_dir.glob(pattern) if p.is_file())
  return sorted(directory / name for directory, _, names in manual_dir.walk()
                for name in names if fnmatch.fnmatchcase(name, pattern))


def download(dl_manager, urls, files: str):
  """`dl_manager.download(urls)`; a failure (no network, say) is a UserError
  that asks for `files` in a --manual_dir instead."""
  try:
    return dl_manager.download(urls)
  except (OSError, tfds.download.DownloadError) as e:
    reason = " ".join(f"{type(e).__name__}: {e}".split())
    raise errors.UserError(
        f"cannot download {files} ({reason}); put {files} in a directory and "
        "pass it as --manual_dir") from None


def manual_or_download(dl_manager, url: str) -> epath.Path:
  """The file named as `url` ends, from the manual dir, else downloaded."""
  filename = url.rsplit("/", 1)[-1]
  found = manual_files(dl_manager, filename)
  return found[0] if found else download(dl_manager, url, filename)


def tar_members(fileobj: BinaryIO) -> Iterator[tuple[str, BinaryIO]]:
  """(name, file) for the regular files of a tar archive of any compression,
  read as a stream in the archive's order (read each file as it comes)."""
  with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
    for member in tar:
      if member.isfile():
        yield member.name, tar.extractfile(member)


class _FilesBuilder(DocumentBuilder, skip_registration=True):
  """Documents from a root directory and a list of relative paths."""

  def _root_and_files(self) -> tuple[pathlib.Path, list[str]]:
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local.
    root, relpaths = self._root_and_files()
    splits = assign_splits(relpaths)
    return {s: self._generate_examples(root, splits[s]) for s in SPLITS}

  def _generate_examples(self, root, relpaths):
    for relpath in relpaths:
      yield relpath, {"text": (root / relpath).read_bytes(), "path": relpath}


def stdlib_root() -> pathlib.Path:
  return pathlib.Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[str]:
  root = stdlib_root()
  return sorted(
      str(p.relative_to(root)) for p in root.rglob("*.py")
      if "site-packages" not in p.relative_to(root).parts and p.is_file())


class Stdlib(_FilesBuilder, skip_registration=True):
  """The Python standard library's source files (about 30 MB, no download)."""

  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name="py" + platform.python_version().replace(".", "_"),
          description=f"Python {platform.python_version()} standard library")
  ]

  def _root_and_files(self):
    return stdlib_root(), stdlib_files()


def _glob_root(pattern: str) -> pathlib.Path:
  """The directory above the first wildcard of a glob."""
  parts = pathlib.Path(os.path.expanduser(pattern)).parts
  fixed = []
  for part in parts[:-1]:
    if glob_lib.has_magic(part):
      break
    fixed.append(part)
  return pathlib.Path(*fixed) if fixed else pathlib.Path(".")


def glob_files(pattern: str) -> tuple[pathlib.Path, list[str]]:
  """The files a glob matches, relative to its root; a clear error if none."""
  root = _glob_root(pattern)
  matches = sorted(
      p for p in glob_lib.glob(os.path.expanduser(pattern), recursive=True)
      if os.path.isfile(p))
  if not matches:
    raise errors.UserError(f"data.files={pattern!r} matches no files")
  relpaths = [os.path.relpath(p, root) for p in matches]
  if len(relpaths) < 3:
    raise errors.UserError(
        f"data.files={pattern!r} matches {len(relpaths)} file(s); at least 3 "
        "are needed to hold out validation and test documents")
  return root.resolve(), relpaths


class TextFilesConfig(tfds.core.BuilderConfig):

  def __init__(self, *, pattern: str):
    root, relpaths = glob_files(pattern)
    fingerprint = hashlib.sha1(pattern.encode())
    for relpath in relpaths:
      stat = (root / relpath).stat()
      fingerprint.update(f"\0{relpath}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    super().__init__(
        name="glob_" + fingerprint.hexdigest()[:16],
        description=f"Files matching {pattern!r}")
    self.root = root
    self.relpaths = relpaths


class TextFiles(_FilesBuilder, skip_registration=True):
  """Local text files matched by a glob; each file is one document."""

  def _root_and_files(self):
    return self.builder_config.root, self.builder_config.relpaths


def _stdlib_builder(data_config, **kwargs):
  del data_config
  return Stdlib(**kwargs)


def _text_files_builder(data_config, **kwargs):
  if not data_config.files:
    raise errors.UserError("data.corpus='text_files' needs data.files (a glob)")
  return TextFiles(config=TextFilesConfig(pattern=data_config.files), **kwargs)


# The builder modules import this one, so they are imported when first used.
def _markov_builder(data_config, **kwargs):
  from diffusion_lm.data import markov  # pylint: disable=g-import-not-at-top
  return markov.Markov(config=markov.MarkovConfig(data_config.markov), **kwargs)


def _text8_builder(data_config, **kwargs):
  del data_config
  from diffusion_lm.data import text8  # pylint: disable=g-import-not-at-top
  return text8.Text8(**kwargs)


def _lm1b_builder(data_config, **kwargs):
  del data_config
  from diffusion_lm.data import lm1b  # pylint: disable=g-import-not-at-top
  return lm1b.Lm1b(**kwargs)


def _openwebtext_builder(data_config, **kwargs):
  from diffusion_lm.data import openwebtext  # pylint: disable=g-import-not-at-top
  return openwebtext.OpenWebText(config=openwebtext.OpenWebTextConfig(
      data_config.validation_documents), **kwargs)


CORPORA = {
    "stdlib": _stdlib_builder,
    "text_files": _text_files_builder,
    "markov": _markov_builder,
    "text8": _text8_builder,
    "lm1b": _lm1b_builder,
    "openwebtext": _openwebtext_builder,
}
# The recipe (configs/<name>.py) named in the command that prepares a download.
RECIPES = {"text8": "text8", "lm1b": "lm1b", "openwebtext": "owt"}


def make_builder(data_config) -> DocumentBuilder:
  """The builder for `data.corpus` (in `data.data_dir`), prepared or not."""
  if data_config.corpus not in CORPORA:
    raise errors.UserError(
        f"data.corpus={data_config.corpus!r} is not one of {sorted(CORPORA)}")
  return CORPORA[data_config.corpus](
      data_config, data_dir=data_config.data_dir or None,
      file_format="array_record")


def prepare_command(data_config, data_dir: str) -> str:
  """The command line that downloads and prepares `data.corpus` into `data_dir`."""
  command = (f"python -m diffusion_lm.data.prepare --config=configs/"
             f"{RECIPES[data_config.corpus]}.py --config.data.data_dir={data_dir}")
  if data_config.corpus == "openwebtext":  # Its builder config depends on it.
    command += f" --config.data.validation_documents={data_config.validation_documents}"
  return command


def builder(data_config) -> DocumentBuilder:
  """The prepared builder for `data.corpus`.

  Corpora without downloads are prepared here on first use; for the others
  a UserError gives the command that prepares them.
  """
  b = make_builder(data_config)
  if not b.is_prepared():
    if b.DOWNLOADS:
      data_dir = str(b.data_dir_root)
      raise errors.UserError(
          f"data.corpus={data_config.corpus!r} is not prepared in {data_dir}; "
          f"prepare it with: {prepare_command(data_config, data_dir)}")
    b.download_and_prepare()
  return b


def prepare(data_config, manual_dir: str | None = None) -> DocumentBuilder:
  """Downloads (or reads from `manual_dir`) and prepares `data.corpus`."""
  manual_path = epath.Path(manual_dir).expanduser() if manual_dir else None
  if manual_path and not manual_path.is_dir():
    raise errors.UserError(f"--manual_dir={manual_dir!r} is not a directory")
  b = make_builder(data_config)
  b.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_path))
  return b
