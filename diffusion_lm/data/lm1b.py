"""LM1B: the One Billion Word benchmark (Chelba et al., 2013); one sentence = one document.

Source: http://www.statmt.org/lm-benchmark/1-billion-word-language-modeling-benchmark-r13output.tar.gz
(about 1.7 GB), read from the TFDS manual dir when it holds that file, else
downloaded; the archive is read as a stream (nothing is extracted).

Splits, the same as TensorFlow Datasets' lm1b builder
(tensorflow_datasets/datasets/lm1b), with every line one example stripped of
surrounding whitespace:

* train: the lines of training-monolingual.tokenized.shuffled/news.en-*
  (99 shards, about 30.3M sentences);
* test: the lines of heldout-monolingual.tokenized.shuffled/news.en.heldout-*
  (50 shards, about 306k sentences);
* validation: the same sentences as test. LM1B has no validation set, and
  the diffusion LM literature (D3PM, SEDD, MDLM) validates on its test split,
  so the training loop's validation numbers are test numbers: do not tune on
  them and report them as test results.

A sentence's `path` is "<shard file name>:<line number>".
"""

import fnmatch
import io
import posixpath

from diffusion_lm import errors
from diffusion_lm.data import builder_base

URL = ("http://www.statmt.org/lm-benchmark/"
       "1-billion-word-language-modeling-benchmark-r13output.tar.gz")
_ROOT = "1-billion-word-language-modeling-benchmark-r13output"
TRAIN_SHARDS = f"{_ROOT}/training-monolingual.tokenized.shuffled/news.en-*"
TEST_SHARDS = f"{_ROOT}/heldout-monolingual.tokenized.shuffled/news.en.heldout-*"
SPLIT_SHARDS = {"train": TRAIN_SHARDS, "validation": TEST_SHARDS,
                "test": TEST_SHARDS}


class Lm1b(builder_base.DocumentBuilder, skip_registration=True):
  """One Billion Word sentences; train and test as in TFDS, validation = test."""

  DOWNLOADS = True
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"Optional: {URL.rsplit('/', 1)[-1]} from {URL}."

  def _split_generators(self, dl_manager):
    archive = builder_base.manual_or_download(dl_manager, URL)
    return {split: self._generate_examples(archive, pattern)
            for split, pattern in SPLIT_SHARDS.items()}

  def _generate_examples(self, archive, pattern):
    num_shards = 0
    with archive.open("rb") as f:
      for name, member in builder_base.tar_members(f):
        if not fnmatch.fnmatchcase(name, pattern):
          continue
        num_shards += 1
        shard = posixpath.basename(name)
        # Lines end at "\n" only, as TFDS's GFile reads the shards; a shard is
        # ~40 MB, and a tar stream's member cannot be wrapped directly.
        lines = io.TextIOWrapper(io.BytesIO(member.read()), encoding="utf-8",
                                 newline="\n")
        for i, line in enumerate(lines):
          yield f"{shard}_{i}", {"text": line.strip(), "path": f"{shard}:{i}"}
    if not num_shards:
      raise errors.UserError(
          f"{archive} has no files matching {pattern}: is it the LM1B archive?")
