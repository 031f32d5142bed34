"""Downloads and prepares the corpus of a config, then prints its split sizes.

  python -m diffusion_lm.prepare --config=configs/text8.py \\
      --config.data.data_dir=/mnt/data/tensorflow_datasets

Needed once for the downloaded corpora (text8, lm1b, openwebtext); the others
are prepared on first use. The prepared dataset goes to `data.data_dir`
('' = $TFDS_DATA_DIR or ~/tensorflow_datasets; prepare on a local disk, then
copy to a bucket if needed), the download to its downloads/ folder. With
--manual_dir, files already there are used instead of downloading them (text8.zip, the LM1B .tar.gz, openwebtext.tar.xz:
see each corpus's module docstring).

TFDS shows its progress bars on a terminal only (corpora).
"""

from absl import flags

from diffusion_lm import cli, validation
from diffusion_lm.data import builder_base, corpora

_CONFIG = cli.define_config_flag()
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Directory holding the corpus's archive (or, for "
    "openwebtext, its .txt files); downloaded when absent.")
flags.mark_flag_as_required("config")


def split_sizes(builder) -> dict[str, tuple[int, int]]:
  """(documents, bytes of text) of each split of a prepared builder."""
  sizes = {}
  for split in (s for s in builder_base.SPLITS if s in builder.info.splits):
    num_docs = num_bytes = 0
    for _, text in builder.documents([split]):
      num_docs, num_bytes = num_docs + 1, num_bytes + len(text)
    sizes[split] = (num_docs, num_bytes)
  return sizes


def main():
  validation.check(_CONFIG.value)
  data_config = _CONFIG.value.data
  builder = corpora.prepare(data_config, manual_dir=_MANUAL_DIR.value)
  print(f"data.corpus={data_config.corpus!r} is prepared in {builder.data_dir}")
  print(f"{'split':<12}{'documents':>14}{'bytes':>18}")
  for split, (num_docs, num_bytes) in split_sizes(builder).items():
    print(f"{split:<12}{num_docs:>14,}{num_bytes:>18,}")


if __name__ == "__main__":
  cli.run(main)
