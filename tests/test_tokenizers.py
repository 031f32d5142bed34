"""Tokenizers: round trips, exact token_bytes, JSON, config, train_tokenizer."""

import io
import json
import os
import pathlib

import numpy as np
import pytest
import sentencepiece as spm

from conftest import config_flags, run_module
from diffusion_lm import config_base, errors
from diffusion_lm.data import corpora, tokenizer_training, tokenizers

BYTE = tokenizers.ByteTokenizer()
CHAR = tokenizers.CharTokenizer()
UNSEEN = "Grüße, 世界! ✓ 🙂\ttabs\r\n\x00 and  spaces  "  # Not in the corpus.


def assert_exact(tokenizer, text: str | bytes):
  """token_bytes counts exactly the text's UTF-8 bytes."""
  ids = tokenizer.encode(text)
  data = text.encode("utf-8") if isinstance(text, str) else text
  assert ids.dtype == np.int32
  assert tokenizer.token_bytes.dtype == np.int64
  assert tokenizer.token_bytes.shape == (tokenizer.vocab_size,)
  assert tokenizer.token_bytes[ids].sum() == len(data)
  return ids


# ------------------------------------------------------------------- byte


def test_byte_tokenizer_round_trips_unicode():
  text = "def f(x):\n    return 'héllo wörld ✓'\n"
  ids = assert_exact(BYTE, text)
  assert len(ids) == len(text.encode("utf-8"))
  assert BYTE.decode(ids) == text
  assert_exact(BYTE, b"a\xff\xfeb")


def test_byte_tokenizer_names_special_ids_and_replaces_bad_bytes():
  ids = np.concatenate([BYTE.encode(b"a\xff"), [BYTE.eos_id],
                        BYTE.encode("b"), [BYTE.mask_id]])
  assert BYTE.decode(ids) == "a\ufffd<|eos|>b<|mask|>"
  assert BYTE.mask_id == BYTE.vocab_size  # Never predicted.
  assert BYTE.token_bytes[BYTE.eos_id] == 0
  with pytest.raises(errors.UserError, match="token id 258 is outside 0..257"):
    BYTE.decode([97, 258])


# ------------------------------------------------------------------- char


def test_char_tokenizer_round_trips_text8():
  text = " anarchism originated as a term of abuse first used against"
  ids = assert_exact(CHAR, text)
  assert ids.tolist()[:3] == [0, 1, 14]  # space, a, n
  assert CHAR.decode(ids) == text
  assert CHAR.decode(np.append(ids[:3], CHAR.mask_id)) == " an<|mask|>"
  assert (CHAR.vocab_size, CHAR.mask_id, CHAR.eos_id) == (27, 27, None)
  assert CHAR.encode(text.encode()).tolist() == ids.tolist()


@pytest.mark.parametrize("text, char, position", [
    ("hello World", "'W'", 6), ("naïve", "'ï'", 2), ("a\nb", r"'\\n'", 1),
    (b"ab\xff", "'\ufffd'", 2)])
def test_char_tokenizer_names_the_first_character_outside_text8(
    text, char, position):
  with pytest.raises(errors.UserError,
                     match=f"cannot encode {char} at character {position}: "
                     "text8's alphabet is space and a-z"):
    CHAR.encode(text)


def test_char_tokenizer_refuses_ids_outside_its_alphabet():
  with pytest.raises(errors.UserError, match="token id 28 is outside 0..27"):
    CHAR.decode([1, 28])


def test_json_round_trip_and_unknown_kind():
  for tokenizer in (BYTE, CHAR):
    spec = json.loads(json.dumps(tokenizer.to_json()))
    assert type(tokenizers.from_json(spec)) is type(tokenizer)
  with pytest.raises(errors.UserError, match="'bpe'"):
    tokenizers.from_json({"kind": "bpe"})


# ---------------------------------------------------------- sentencepiece


def data_config(corpus_glob, data_dir, **overrides):
  config = config_base.base_config().data
  config.update(corpus="text_files", files=corpus_glob, data_dir=data_dir,
                tokenizer="sentencepiece", tokenizer_model="")
  config.update(overrides)
  return config


@pytest.fixture(scope="module")
def trained(corpus_glob, data_dir):
  """train_tokenizer's output: (model path, its stdout), run once."""
  result = run_module("diffusion_lm.train_tokenizer",
                      *config_flags(corpus_glob, data_dir), "--vocab_size=300")
  prepared = corpora.builder(data_config(corpus_glob, data_dir)).data_dir
  return os.path.join(prepared, "spm_unigram_300.model"), result.stdout


@pytest.fixture(scope="module")
def spm_tokenizer(trained):
  return tokenizers.SentencePieceTokenizer.from_file(trained[0])


@pytest.mark.slow
def test_train_tokenizer_writes_the_model_and_prints_the_override(trained):
  path, stdout = trained
  assert f"wrote {path}" in stdout
  assert ("--config.data.tokenizer=sentencepiece "
          "--config.data.tokenizer_model=spm_unigram_300.model") in stdout


def test_sentencepiece_round_trips_any_text_with_exact_bytes(spm_tokenizer):
  tok = spm_tokenizer
  assert (tok.vocab_size, tok.mask_id, tok.eos_id) == (300, 300, 1)
  for text in ("  alpha beta\n\ngamma  delta\n", UNSEEN, ""):
    ids = assert_exact(tok, text)
    assert tok.decode(ids) == text
    assert tok.encode(text.encode()).tolist() == ids.tolist()
  assert len(tok.encode("alpha beta gamma")) < len("alpha beta gamma")  # Pieces.
  ids = assert_exact(tok, b"beta\xff\xfe gamma")  # Invalid UTF-8: byte pieces.
  assert tok.decode(ids) == "beta\ufffd\ufffd gamma"
  ids = np.concatenate([tok.encode("alpha"), [tok.eos_id], tok.encode("beta"),
                        [tok.mask_id]])
  assert tok.decode(ids) == "alpha<|eos|>beta<|mask|>"
  assert tok.token_bytes[[0, tok.eos_id]].tolist() == [0, 0]  # <unk>, EOS


def test_sentencepiece_json_is_self_contained(trained, spm_tokenizer, tmp_path):
  copy = tmp_path / "copy.model"
  copy.write_bytes(pathlib.Path(trained[0]).read_bytes())
  spec = json.loads(json.dumps(
      tokenizers.SentencePieceTokenizer.from_file(str(copy)).to_json()))
  copy.unlink()
  rebuilt = tokenizers.from_json(spec)
  assert rebuilt.encode(UNSEEN).tolist() == spm_tokenizer.encode(UNSEEN).tolist()
  np.testing.assert_array_equal(rebuilt.token_bytes, spm_tokenizer.token_bytes)


def from_config(config):
  return tokenizers.from_config(config, corpora.prepared_dir(config))


def test_from_config_resolves_the_model_against_the_corpus_dir(
    trained, spm_tokenizer, corpus_glob, data_dir):
  # Bug caught: a relative model path read from the working directory, or an
  # absolute one joined to the corpus directory.
  for model in ("spm_unigram_300.model", trained[0]):
    tok = from_config(data_config(corpus_glob, data_dir, tokenizer_model=model))
    assert tok.encode(UNSEEN).tolist() == spm_tokenizer.encode(UNSEEN).tolist()


def test_building_a_tokenizer_prepares_no_corpus(corpus_glob, tmp_path):
  # Bug caught: tokenizers reaching into the data layer and preparing it.
  config = data_config(corpus_glob, str(tmp_path), tokenizer_model="x.model")
  with pytest.raises(errors.UserError, match="no file"):
    from_config(config)
  assert not os.listdir(tmp_path)


def test_from_config_errors_name_the_field_or_file(trained, corpus_glob, data_dir):
  missing = os.path.join(os.path.dirname(trained[0]), "nope.model")
  with pytest.raises(errors.UserError, match=(
      f"data.tokenizer_model='nope.model': no file {missing}; train one with "
      "python -m diffusion_lm.train_tokenizer")):
    from_config(data_config(corpus_glob, data_dir,
                                       tokenizer_model="nope.model"))
  with pytest.raises(errors.UserError, match="needs data.tokenizer_model"):
    from_config(data_config(corpus_glob, data_dir))
  with pytest.raises(errors.UserError,
                     match="only read by data.tokenizer='sentencepiece'"):
    from_config(data_config(corpus_glob, data_dir, tokenizer="byte",
                                       tokenizer_model="x.model"))
  with pytest.raises(errors.UserError, match="data.tokenizer='bpe' is not one of"):
    from_config(data_config(corpus_glob, data_dir, tokenizer="bpe"))
  assert isinstance(from_config(data_config(
      corpus_glob, data_dir, tokenizer="char")), tokenizers.CharTokenizer)


def spm_model(**options) -> bytes:
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(["alpha beta gamma delta"] * 50), model_writer=model,
      vocab_size=30, hard_vocab_limit=False, minloglevel=2, **options)
  return model.getvalue()


@pytest.mark.parametrize("options, message", [
    ({}, r"does not keep the text's bytes \(normalization 'nmt_nfkc', "
         "add_dummy_prefix, remove_extra_whitespaces\)"),
    ({"eos_id": -1, "normalization_rule_name": "identity",
      "add_dummy_prefix": False, "remove_extra_whitespaces": False},
     "has no EOS piece")])
def test_sentencepiece_refuses_models_that_break_the_contract(options, message):
  with pytest.raises(errors.UserError, match=message):
    tokenizers.SentencePieceTokenizer(spm_model(**options), name="m.model")
  with pytest.raises(errors.UserError, match="m.model is not a sentencepiece model"):
    tokenizers.SentencePieceTokenizer(b"not a model", name="m.model")


def test_without_byte_fallback_unknown_characters_count_no_bytes():
  tok = tokenizers.SentencePieceTokenizer(spm_model(
      normalization_rule_name="identity", add_dummy_prefix=False,
      remove_extra_whitespaces=False, byte_fallback=False))
  ids = tok.encode(b"beta \xe2\x9c\x93 \xff")  # A check mark; an invalid byte.
  assert tok.decode(ids) == "beta  \u2047   \u2047 "  # <unk> decodes as ' ⁇ '.
  assert tok.token_bytes[ids].sum() == len("beta  ")


@pytest.mark.slow
def test_train_tokenizer_fails_in_one_line_and_writes_nothing(
    trained, corpus_glob, data_dir):
  before = set(os.listdir(os.path.dirname(trained[0])))
  result = run_module("diffusion_lm.train_tokenizer",
                      *config_flags(corpus_glob, data_dir), "--vocab_size=5000",
                      check=False)
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: sentencepiece cannot train --vocab_size=5000 "
                         "--model_type=unigram: Vocabulary size too high")
  assert set(os.listdir(os.path.dirname(trained[0]))) == before


def test_a_named_model_is_trained_on_first_use_and_then_kept(
    trained, corpus_glob, tmp_path):
  # Bugs caught: the main job failing on a recipe whose tokenizer does not
  # exist yet, retraining (and so changing) it on every run, or training a
  # model other than the one named.
  config = data_config(corpus_glob, str(tmp_path),
                       tokenizer_model="spm_bpe_320.model")
  config.tokenizer_train.update(vocab_size=320, model_type="bpe")
  tokenizer_training.ensure_model(config)
  path = os.path.join(corpora.prepared_dir(config), "spm_bpe_320.model")
  first = pathlib.Path(path).stat().st_mtime_ns
  tok = from_config(config)
  assert tok.vocab_size == 320
  tokenizer_training.ensure_model(config)
  assert pathlib.Path(path).stat().st_mtime_ns == first
  config.tokenizer_train.model_type = "word"
  with pytest.raises(errors.UserError,
                     match="data.tokenizer_train.model_type='word'"):
    tokenizer_training.check_settings(config.tokenizer_train)
