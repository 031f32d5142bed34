"""Training SentencePiece models on a corpus: the library behind
`python -m diffusion_lm.train_tokenizer`, and first-use training.

The models keep every byte of the text, so bits per byte stay exact:
identity normalization, no dummy prefix, whitespace kept as it is, and byte
fallback (characters outside the vocabulary become their UTF-8 bytes). Their
ids are <unk> = 0, EOS = 1, the 256 byte pieces, then the learned pieces.

With `data.tokenizer_train.vocab_size` > 0, a recipe names a model that does
not exist yet (`data.tokenizer_model`, relative to the prepared corpus) and
the first run trains it there (`ensure_model`), as corpora are prepared on
first use.
"""

import io
import os

import jax
import sentencepiece as spm
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from diffusion_lm import errors, files
from diffusion_lm.data import corpora, tokenizers

MODEL_TYPES = ("unigram", "bpe", "char")


def train_model(builder, vocab_size: int, model_type: str, *,
                max_documents: int = 0,
                character_coverage: float = 0.9995) -> bytes:
  """A serialized SentencePiece model trained on the train split of a
  prepared corpus (its builder: corpora.builder).

  Trains on the first `max_documents` training documents (0: all of them);
  text that is not valid UTF-8 is read with U+FFFD in its place.
  """
  source = builder.as_data_source("train")
  num_docs = min(max_documents or len(source), len(source))
  if not num_docs:
    raise errors.UserError(f"corpus {builder.name!r} has no training documents")
  logging.info("Training a %s sentencepiece model of %d pieces on %d "
               "documents of corpus %r.", model_type, vocab_size, num_docs,
               builder.name)
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


def check_settings(settings) -> None:
  """Refuses bad `data.tokenizer_train` values, naming the field."""
  problems = []
  if not (isinstance(settings.vocab_size, int) and settings.vocab_size >= 0):
    problems.append(f"vocab_size={settings.vocab_size!r} must be an integer "
                    ">= 0 (0 = never train)")
  if settings.model_type not in MODEL_TYPES:
    problems.append(f"model_type={settings.model_type!r} must be one of "
                    f"{list(MODEL_TYPES)}")
  if not (isinstance(settings.max_documents, int) and settings.max_documents >= 0):
    problems.append(f"max_documents={settings.max_documents!r} must be an "
                    "integer >= 0 (0 = all)")
  if problems:
    raise errors.UserError("; ".join(f"data.tokenizer_train.{p}" for p in problems))


def ensure_model(data_config) -> None:
  """Trains data.tokenizer_model on the corpus's train split when it is
  missing and data.tokenizer_train.vocab_size asks for one (module doc).

  In a multi-process job every process calls it: process 0 trains first
  while the others wait; a process whose data dir is on a disk of its own
  then trains its own copy (as corpora.builder prepares one).
  """
  settings = data_config.tokenizer_train
  if data_config.tokenizer != "sentencepiece" or not settings.vocab_size:
    return
  builder = corpora.builder(data_config)  # Every process: it syncs them.
  path = epath.Path(builder.data_dir) / os.path.expanduser(
      data_config.tokenizer_model)
  if jax.process_count() > 1:
    if jax.process_index() == 0:
      _train_missing(builder, settings, path)
    multihost_utils.sync_global_devices("diffusion_lm: tokenizer trained")
  _train_missing(builder, settings, path)


def _train_missing(builder, settings, path: epath.Path) -> None:
  if path.exists():
    return
  model = train_model(builder, settings.vocab_size, settings.model_type,
                      max_documents=settings.max_documents)
  # Loads as training will.
  tokenizers.SentencePieceTokenizer(model, name=str(path))
  path.parent.mkdir(parents=True, exist_ok=True)
  files.write_atomically(str(path), model)
  logging.info("Wrote %s.", path)
