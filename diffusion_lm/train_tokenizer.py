"""Trains a SentencePiece tokenizer on the train split of a config's corpus.

  python -m diffusion_lm.train_tokenizer --config=configs/quickstart.py \\
      --vocab_size=32000 --model_type=unigram

writes <the corpus's prepared data dir>/spm_unigram_32000.model (or --output)
and prints the overrides that train with it:

  --config.data.tokenizer=sentencepiece --config.data.tokenizer_model=spm_unigram_32000.model

The model keeps every byte of the text, so bits per byte stay exact: identity
normalization, no dummy prefix, whitespace kept as it is, and byte fallback
(characters outside the vocabulary become their UTF-8 bytes). Its ids are
<unk> = 0, EOS = 1, the 256 byte pieces, then the learned pieces: vocab_size
counts them all. Documents are fed to SentencePiece from memory, one
sentence each; nothing is written until the model is complete.
"""

import os

from absl import flags

from diffusion_lm import cli, errors, files, validation
from diffusion_lm.data import corpora, tokenizer_training, tokenizers

_CONFIG = cli.define_config_flag()
_VOCAB_SIZE = flags.DEFINE_integer(
    "vocab_size", 32000, "Pieces in the model, the 258 byte and special pieces "
    "included.", lower_bound=1)
_MODEL_TYPE = flags.DEFINE_enum(
    "model_type", "unigram", list(tokenizer_training.MODEL_TYPES),
    "SentencePiece model type ('word' is not offered: with byte fallback it "
    "spells the word-boundary marker as 3 bytes).")
_MAX_DOCUMENTS = flags.DEFINE_integer(
    "max_documents", 0, "Train on the first N training documents (0: all).",
    lower_bound=0)
_CHARACTER_COVERAGE = flags.DEFINE_float(
    "character_coverage", 0.9995, "Fraction of the characters that get their "
    "own piece; the rarest others are spelled in bytes.",
    lower_bound=0.0, upper_bound=1.0)
_OUTPUT = flags.DEFINE_string(
    "output", "", "Model file to write; '' = <prepared data dir>/"
    "spm_<model_type>_<vocab_size>.model.")
flags.mark_flag_as_required("config")


def main():
  validation.check(_CONFIG.value)
  data_config = _CONFIG.value.data
  builder = corpora.builder(data_config)
  data_dir = os.path.abspath(builder.data_dir)
  name = f"spm_{_MODEL_TYPE.value}_{_VOCAB_SIZE.value}.model"
  path = os.path.abspath(_OUTPUT.value or os.path.join(data_dir, name))
  model = tokenizer_training.train_model(
      builder, _VOCAB_SIZE.value, _MODEL_TYPE.value,
      max_documents=_MAX_DOCUMENTS.value,
      character_coverage=_CHARACTER_COVERAGE.value)
  tokenizers.SentencePieceTokenizer(model, name=path)  # Loads as training will.
  try:
    files.write_atomically(path, model)
  except OSError as e:
    raise errors.UserError(f"cannot write {path}: {e.strerror}") from None
  inside = os.path.commonpath([path, data_dir]) == data_dir
  setting = os.path.relpath(path, data_dir) if inside else path
  print(f"wrote {path}\ntrain with it: --config.data.tokenizer=sentencepiece "
        f"--config.data.tokenizer_model={setting}")


if __name__ == "__main__":
  cli.run(main)
