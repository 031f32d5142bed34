"""OpenWebText (Gokaslan & Cohen, 2019): web pages linked from Reddit; one .txt = one document.

Sources, the first found in the TFDS manual dir:

1. an archive: the original `openwebtext.tar.xz` (Zenodo record 3834942,
   12 GB) or Hugging Face's Skylion007/openwebtext subsets `urlsf_subset00.tar`
   ... `urlsf_subset20.tar`. Their members `openwebtext/urlsf_subset*.xz` are
   each an xz-compressed tar of .txt documents; they are copied out once, still
   compressed, into the TFDS download dir (about 12 GB);
2. those `urlsf_subset*.xz` files themselves, anywhere below the manual dir;
3. .txt documents, anywhere below the manual dir;

else the 21 Hugging Face subset archives are downloaded and read as in 1.

Documents: `path` is "<subset>/<name>.txt" (for .txt files, their path below
the manual dir); they are ordered by that identifier, subset (or directory)
first, then file name. The text is cleaned as Hugging Face's openwebtext
loader does, which MDLM trains on: runs of three or more newlines become two
and surrounding whitespace is stripped.

Splits: the last `validation_documents` (100,000) documents in that order are
"validation", as MDLM holds out the last 100k documents of Hugging Face's
single train split (`train[-100000:]`); the rest are "train". There is no
test split: recipes evaluate on validation. (Hugging Face lists documents in
the archives' order, so its last 100k need not be the same documents.)
"""

import collections
from collections.abc import Iterator
import fnmatch
import itertools
import posixpath
import re

from etils import epath
import tensorflow_datasets as tfds

from diffusion_lm import errors
from diffusion_lm.data import builder_base

HF_URLS = [
    "https://huggingface.co/datasets/Skylion007/openwebtext/resolve/main/"
    f"subsets/urlsf_subset{i:02d}.tar" for i in range(21)]
ARCHIVES = ("openwebtext.tar.xz", "urlsf_subset[0-9][0-9].tar")
SUBSET = "urlsf_subset*.xz"
VALIDATION_DOCUMENTS = 100_000


def clean(data: bytes) -> str:
  """A document's text as Hugging Face's loader gives it."""
  return re.sub("\n\n\n+", "\n\n", data.decode("utf-8", errors="replace")).strip()


class _Subset:
  """An urlsf_subset*.xz file: an xz-compressed tar of .txt documents."""

  def __init__(self, path: epath.Path):
    self.path = path
    self.name = path.name.removesuffix(".xz")

  def __len__(self) -> int:
    return len(self._documents())

  def documents(self) -> Iterator[tuple[str, bytes]]:
    return iter(self._documents())

  def _documents(self) -> list[tuple[str, bytes]]:
    with self.path.open("rb") as f:
      return sorted((f"{self.name}/{name}", member.read())
                    for name, member in builder_base.tar_members(f)
                    if name.endswith(".txt"))


class _Directory:
  """The .txt documents of one directory (paths relative to `root`, sorted)."""

  def __init__(self, root: epath.Path, relpaths: list[str]):
    self.root = root
    self.relpaths = relpaths

  def __len__(self) -> int:
    return len(self.relpaths)

  def documents(self) -> Iterator[tuple[str, bytes]]:
    for relpath in self.relpaths:
      yield relpath, (self.root / relpath).read_bytes()


def _directories(root: epath.Path, files: list[epath.Path]) -> list[_Directory]:
  by_directory = collections.defaultdict(list)
  for path in files:
    relpath = path.relative_to(root).as_posix()
    by_directory[posixpath.dirname(relpath)].append(relpath)
  return [_Directory(root, sorted(relpaths))
          for _, relpaths in sorted(by_directory.items())]


def _extract_subsets(archives: list[epath.Path], out_dir: epath.Path) -> None:
  """Copies the urlsf_subset*.xz members of `archives` into `out_dir`; an
  archive copied out completely before is skipped."""
  out_dir.mkdir(parents=True, exist_ok=True)
  for archive in archives:
    done = out_dir / f"{archive.name}.done"
    if done.exists():
      continue
    with archive.open("rb") as f:
      for name, member in builder_base.tar_members(f):
        subset = posixpath.basename(name)
        if fnmatch.fnmatchcase(subset, SUBSET):
          partial = out_dir / f"{subset}.partial"
          partial.write_bytes(member.read())
          partial.replace(out_dir / subset)
    done.touch()


def validation_start(shards, num_validation: int) -> tuple[int, int]:
  """(shard, offset in it) of the first of the last `num_validation`
  documents; shards' lengths are taken from the last one back, only as far
  as needed (counting a subset's documents decompresses it)."""
  remaining = num_validation
  for i in reversed(range(len(shards))):
    size = len(shards[i])
    if size >= remaining and (i, size - remaining) != (0, 0):
      return i, size - remaining
    remaining -= size
  raise errors.UserError(
      f"openwebtext has {num_validation - remaining} documents: holding out "
      f"data.validation_documents={num_validation} leaves none for training")


class OpenWebTextConfig(tfds.core.BuilderConfig):
  """How many of the last documents are held out for validation."""

  def __init__(self, validation_documents: int = VALIDATION_DOCUMENTS):
    if validation_documents < 1:
      raise errors.UserError(f"data.validation_documents="
                             f"{validation_documents} must be positive")
    super().__init__(
        name=f"val{validation_documents}",
        description=f"The last {validation_documents} documents are validation")
    self.validation_documents = validation_documents


class OpenWebText(builder_base.DocumentBuilder, skip_registration=True):
  """OpenWebText documents; the last 100k (by identifier) are validation."""

  name = "openwebtext"  # Configured by data.validation_documents.
  DOWNLOADS = True
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Optional: openwebtext.tar.xz, or urlsf_subset00.tar .. urlsf_subset20.tar "
      "(https://huggingface.co/datasets/Skylion007/openwebtext), or their "
      "urlsf_subset*.xz members, or extracted .txt documents.")

  def _shards(self, dl_manager) -> list:
    """The documents' subsets or directories, in order."""
    archives = [path for pattern in ARCHIVES
                for path in builder_base.manual_files(dl_manager, pattern)]
    subsets = builder_base.manual_files(dl_manager, SUBSET, recursive=True)
    if not archives and not subsets:
      texts = builder_base.manual_files(dl_manager, "*.txt", recursive=True)
      if texts:
        return _directories(dl_manager.manual_dir, texts)
      archives = builder_base.download(
          dl_manager, HF_URLS, "urlsf_subset00.tar .. urlsf_subset20.tar")
    if archives:
      out_dir = dl_manager.download_dir / "openwebtext_subsets"
      _extract_subsets(archives, out_dir)
      subsets = list(out_dir.glob(SUBSET))
    return [_Subset(path) for path in sorted(subsets, key=lambda p: p.name)]

  def _split_generators(self, dl_manager):
    shards = self._shards(dl_manager)
    start = validation_start(shards, self.builder_config.validation_documents)
    return {
        "train": self._generate_examples(shards, (0, 0), start),
        "validation": self._generate_examples(shards, start,
                                              (len(shards) - 1, None)),
    }

  def _generate_examples(self, shards, start, stop):
    """Documents from `start` to `stop`, each (shard, offset in it); an offset
    of None is the shard's end."""
    for i in range(start[0], stop[0] + 1):
      first = start[1] if i == start[0] else 0
      last = stop[1] if i == stop[0] else None
      for identifier, data in itertools.islice(shards[i].documents(), first, last):
        yield identifier, {"text": clean(data), "path": identifier}
