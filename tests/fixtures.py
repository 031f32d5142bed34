"""Small files in the layout of the real downloads, for the builders' tests."""

import io
import tarfile
import zipfile

import numpy as np

from diffusion_lm.data import lm1b

LM1B_ROOT = "1-billion-word-language-modeling-benchmark-r13output"
LM1B_TRAIN = f"{LM1B_ROOT}/training-monolingual.tokenized.shuffled"
LM1B_HELDOUT = f"{LM1B_ROOT}/heldout-monolingual.tokenized.shuffled"

WORDS = ("the a of cat dog sat ran on in under mat roof quickly slowly said "
         "prices rose fell market week today".split())


def sentences(n: int, seed: int = 0) -> list[str]:
  """n short random sentences of the words above."""
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))) + " ."
          for _ in range(n)]


def write_text8_zip(directory, num_chars=3001, seed=0) -> bytes:
  """text8.zip holding a `text8` member of random letters and spaces."""
  letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ", np.uint8)
  text = np.random.default_rng(seed).choice(letters, size=num_chars).tobytes()
  directory.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(directory / "text8.zip", "w") as archive:
    archive.writestr("text8", text)
  return text


def add_file(archive: tarfile.TarFile, name: str, data: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  archive.addfile(info, io.BytesIO(data))


def write_lm1b_archive(directory, files: dict[str, list[str]]) -> None:
  """LM1B's .tar.gz with `files` (archive path -> lines) in it."""
  directory.mkdir(parents=True, exist_ok=True)
  with tarfile.open(directory / lm1b.URL.rsplit("/", 1)[-1], "w:gz") as f:
    for name, lines in files.items():
      add_file(f, name, "".join(line + "\n" for line in lines).encode())


def write_owt_texts(directory, documents: dict[str, str]) -> None:
  """Extracted OpenWebText: openwebtext/<subset>/<name>.txt files."""
  for relpath, text in documents.items():
    path = directory / "openwebtext" / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
