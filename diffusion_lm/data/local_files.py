"""Corpora of local files, one document per file: `stdlib` and `text_files`.

* `stdlib`: the .py files of the standard library of the Python running this
  code (site-packages left out); one builder config per Python version.
* `text_files`: the files matched by a glob (`data.files`); the config name is
  a hash of the glob and of the matched files' paths, sizes and mtimes, so an
  edited corpus is prepared afresh. A file the glob reaches through a symlink
  that leads out of the glob's directory is refused unless
  `data.follow_symlinks`, and so is a file larger than `data.max_file_bytes`
  (each is read whole, as one document), and a corpus with a split whose
  files are all empty (bits per byte need bytes).

Documents go to train / validation / test by a stable hash of their path
(about 90 / 5 / 5; `assign_splits`).
"""

import glob as glob_lib
import hashlib
import os
import pathlib
import platform
import sysconfig

import tensorflow_datasets as tfds

from diffusion_lm import errors
from diffusion_lm.data.builder_base import SPLITS, DocumentBuilder

_HELD_OUT_FRACTION = {"validation": 0.05, "test": 0.05}


def _hash_fraction(relpath: str) -> float:
  """A stable number in [0, 1) from a path (the same on every machine)."""
  digest = hashlib.sha256(relpath.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_splits(relpaths: list[str]) -> dict[str, list[str]]:
  """Splits documents by path hash: [0, .9) train, [.9, .95) validation, rest test.

  With 3 or more documents every split gets at least one: when the hash
  leaves one empty, it takes a document from the largest (train gives its
  highest hash, a held-out split its lowest).
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
    for split in SPLITS:
      if not splits[split]:
        donor = max(SPLITS, key=lambda s: len(splits[s]))
        splits[split].append(splits[donor].pop(-1 if donor == "train" else 0))
  return splits


class _FilesBuilder(DocumentBuilder, skip_registration=True):
  """Documents from a root directory and a list of relative paths."""

  def _root_and_files(self) -> tuple[pathlib.Path, list[str]]:
    raise NotImplementedError

  def location(self, path: str) -> str:
    return str(self._root_and_files()[0] / path)

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


def glob_files(pattern: str, *, follow_symlinks: bool = False,
               max_file_bytes: int | None = None
               ) -> tuple[pathlib.Path, list[str]]:
  """The files a glob matches, relative to its root; a clear error if none,
  if one leaves the root through a symlink (unless follow_symlinks) or is
  larger than max_file_bytes, or if a split's files are all empty."""
  root = _glob_root(pattern)
  matches = sorted(
      p for p in glob_lib.glob(os.path.expanduser(pattern), recursive=True)
      if os.path.isfile(p))
  if not matches:
    raise errors.UserError(f"data.files={pattern!r} matches no files")
  real_root = root.resolve()
  sizes = {}
  for path in matches:
    target = pathlib.Path(path).resolve()
    if not follow_symlinks and not target.is_relative_to(real_root):
      raise errors.UserError(
          f"data.files={pattern!r}: {path} leads through a symlink to "
          f"{target}, outside {real_root}; set data.follow_symlinks=True to "
          "read it")
    size = target.stat().st_size
    if max_file_bytes is not None and size > max_file_bytes:
      raise errors.UserError(
          f"data.files={pattern!r}: {path} is {size:,} bytes, more than "
          f"data.max_file_bytes={max_file_bytes:,} (each file is one document, "
          "read whole): raise the limit or split the file")
    sizes[os.path.relpath(path, root)] = size
  relpaths = list(sizes)
  if len(relpaths) < 3:
    raise errors.UserError(
        f"data.files={pattern!r} matches {len(relpaths)} file(s); at least 3 "
        "are needed to hold out validation and test documents")
  _check_not_empty(pattern, sizes)
  return root.resolve(), relpaths


def _check_not_empty(pattern: str, sizes: dict[str, int]) -> None:
  """Refuses a corpus whose files, or one split's files, are all empty: it
  would train on EOS alone and measure infinite bits per byte."""
  if not any(sizes.values()):
    raise errors.UserError(
        f"data.files={pattern!r}: the {len(sizes)} files it matches are all "
        "empty (0 bytes)")
  for split, relpaths in assign_splits(list(sizes)).items():
    if not any(sizes[p] for p in relpaths):
      names = ", ".join(relpaths[:3]) + (", ..." if len(relpaths) > 3 else "")
      raise errors.UserError(
          f"data.files={pattern!r}: every file of the {split} split is empty "
          f"({names}); every split needs text: fill them or match more files")


class TextFilesConfig(tfds.core.BuilderConfig):

  def __init__(self, *, pattern: str, follow_symlinks: bool = False,
               max_file_bytes: int | None = None):
    root, relpaths = glob_files(pattern, follow_symlinks=follow_symlinks,
                                max_file_bytes=max_file_bytes)
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




def text_files_builder(data_config, **kwargs) -> TextFiles:
  if not data_config.files:
    raise errors.UserError("data.corpus='text_files' needs data.files (a glob)")
  return TextFiles(config=TextFilesConfig(
      pattern=data_config.files, follow_symlinks=data_config.follow_symlinks,
      max_file_bytes=data_config.max_file_bytes), **kwargs)
