"""text8: the first 10^8 characters of cleaned English Wikipedia (26 letters and space).

Source: http://mattmahoney.net/dc/text8.zip, whose one member `text8` holds
100,000,000 characters; read from the TFDS manual dir when it holds text8.zip,
else downloaded.

Splits: the standard character-level split (Mikolov et al. 2012; D3PM, MD4):
the first 90% of the characters are train, the next 5% validation and the
last 5% test (90M / 5M / 5M), computed from the file's length. text8 has no
document boundaries: each split is cut into consecutive chunks of
`chunk_chars` characters (100,000 by default; a split's last chunk may be
shorter), stored in their original order (`disable_shuffling`), so reading a
split's chunks in order gives back exactly its slice of the file. A chunk's
`path` is "text8:<offset of its first character in the file>".
"""

import zipfile

import tensorflow_datasets as tfds

from diffusion_lm import errors
from diffusion_lm.data import builder_base

URL = "http://mattmahoney.net/dc/text8.zip"
MEMBER = "text8"
CHUNK_CHARS = 100_000


def split_bounds(num_chars: int) -> dict[str, tuple[int, int]]:
  """[start, stop) character offsets of each split: 90% / 5% / 5%."""
  train_stop, validation_stop = num_chars * 90 // 100, num_chars * 95 // 100
  return {"train": (0, train_stop), "validation": (train_stop, validation_stop),
          "test": (validation_stop, num_chars)}


def read_text8(path) -> bytes:
  """The `text8` member of the zip archive at `path` (an epath.Path)."""
  with path.open("rb") as f, zipfile.ZipFile(f) as archive:
    if MEMBER not in archive.namelist():
      raise errors.UserError(f"{path} has no member {MEMBER!r}: is it text8.zip?")
    return archive.read(MEMBER)


class Text8Config(tfds.core.BuilderConfig):
  """How many characters each stored chunk holds."""

  def __init__(self, chunk_chars: int = CHUNK_CHARS):
    if chunk_chars < 1:
      raise errors.UserError(f"text8 chunk_chars={chunk_chars} must be positive")
    super().__init__(name=f"chunks{chunk_chars}",
                     description=f"Chunks of {chunk_chars} characters")
    self.chunk_chars = chunk_chars


class Text8(builder_base.DocumentBuilder, skip_registration=True):
  """text8 in consecutive chunks, in order; splits 90M / 5M / 5M characters."""

  BUILDER_CONFIGS = [Text8Config()]
  DOWNLOADS = True
  ORDERED = True
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"Optional: {URL.rsplit('/', 1)[-1]} from {URL}."

  def _split_generators(self, dl_manager):
    text = read_text8(builder_base.manual_or_download(dl_manager, URL))
    return {split: self._generate_examples(text, start, stop)
            for split, (start, stop) in split_bounds(len(text)).items()}

  def _generate_examples(self, text, start, stop):
    for offset in range(start, stop, self.builder_config.chunk_chars):
      end = min(offset + self.builder_config.chunk_chars, stop)
      yield offset, {"text": text[offset:end], "path": f"text8:{offset}"}
