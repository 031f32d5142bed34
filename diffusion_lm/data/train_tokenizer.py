"""Trains a SentencePiece tokenizer on the train split of a config's corpus.

  python -m diffusion_lm.data.train_tokenizer --config=configs/quickstart.py \\
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

import contextlib
import io
import os
import uuid

from absl import flags
import sentencepiece as spm

from diffusion_lm import cli, errors
from diffusion_lm.data import corpora, pipeline, tokenizers

_CONFIG = cli.define_config_flag()
_VOCAB_SIZE = flags.DEFINE_integer(
    "vocab_size", 32000, "Pieces in the model, the 258 byte and special pieces "
    "included.", lower_bound=1)
_MODEL_TYPE = flags.DEFINE_enum(
    "model_type", "unigram", ["unigram", "bpe", "char"],
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


def train_model(data_config, vocab_size: int, model_type: str, *,
                max_documents: int = 0,
                character_coverage: float = 0.9995) -> bytes:
  """A serialized SentencePiece model trained on the corpus's train split.

  Trains on the first `max_documents` training documents (0: all of them);
  text that is not valid UTF-8 is read with U+FFFD in its place.
  """
  source = pipeline.source(data_config, "train")
  num_docs = min(max_documents or len(source), len(source))
  if not num_docs:
    raise errors.UserError(
        f"data.corpus={data_config.corpus!r} has no training documents")
  print(f"training a {model_type} model of {vocab_size} pieces on {num_docs} "
        f"documents of data.corpus={data_config.corpus!r}", flush=True)
  documents = (source[i]["text"].decode("utf-8", errors="replace")
               for i in range(num_docs))
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=documents, model_writer=model,
        vocab_size=vocab_size, model_type=model_type,
        character_coverage=character_coverage,
        byte_fallback=True, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        unk_id=0, eos_id=1, bos_id=-1, pad_id=-1,
        max_sentence_length=1 << 30,  # Whole documents (SentencePiece's limit).
        minloglevel=2)
  except RuntimeError as e:  # "INTERNAL: file.cc(line) [check] Message."
    detail = str(e).rpartition("] ")[2].strip() or str(e)
    raise errors.UserError(
        f"sentencepiece cannot train --vocab_size={vocab_size} "
        f"--model_type={model_type}: {detail}") from None
  return model.getvalue()


def write_atomically(path: str, data: bytes) -> None:
  """Writes `data` to `path` through a temporary file in the same directory:
  the file appears complete or not at all."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.{uuid.uuid4().hex}.tmp"
  try:
    with open(tmp, "xb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def main():
  data_config = _CONFIG.value.data
  data_dir = os.path.abspath(corpora.builder(data_config).data_dir)
  name = f"spm_{_MODEL_TYPE.value}_{_VOCAB_SIZE.value}.model"
  path = os.path.abspath(_OUTPUT.value or os.path.join(data_dir, name))
  model = train_model(data_config, _VOCAB_SIZE.value, _MODEL_TYPE.value,
                      max_documents=_MAX_DOCUMENTS.value,
                      character_coverage=_CHARACTER_COVERAGE.value)
  tokenizers.SentencePieceTokenizer(model, name=path)  # Loads as training will.
  try:
    write_atomically(path, model)
  except OSError as e:
    raise errors.UserError(f"cannot write {path}: {e.strerror}") from None
  inside = os.path.commonpath([path, data_dir]) == data_dir
  setting = os.path.relpath(path, data_dir) if inside else path
  print(f"wrote {path}\ntrain with it: --config.data.tokenizer=sentencepiece "
        f"--config.data.tokenizer_model={setting}")


if __name__ == "__main__":
  cli.run(main)
