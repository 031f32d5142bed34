"""What every corpus builder shares: the TFDS base class and download helpers.

A corpus is a TensorFlow Datasets builder (written as array_record, read with
`tfds.data_source`; no TensorFlow needed) of documents with features `text`
(the raw bytes) and `path` (a stable identifier of the document).
"""

from collections.abc import Iterator
import fnmatch
import tarfile
from typing import BinaryIO

from etils import epath
import tensorflow_datasets as tfds

from diffusion_lm import errors

SPLITS = ("train", "validation", "test")
_BATCH = 4096  # Documents read at a time.


class DocumentBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Documents with features `text` and `path` (a stable document identifier).

  Subclasses may set DOWNLOADS (prepared by `python -m diffusion_lm.prepare`,
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

  def location(self, path: str) -> str:
    """Where the document whose `path` feature this is came from, for
    messages."""
    return path

  def documents(self, splits=None) -> Iterator[tuple[str, bytes]]:
    """(location, text) of each document of a prepared builder's splits
    (all by default), read in batches."""
    for split in splits or self.info.splits:
      source = self.as_data_source(split)
      for start in range(0, len(source), _BATCH):
        for doc in source.__getitems__(
            range(start, min(start + _BATCH, len(source)))):
          yield self.location(doc["path"].decode("utf-8")), doc["text"]

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


