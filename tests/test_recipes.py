"""The published recipes' tiny variants (`configs/<recipe>.py:tiny`) train end
to end on fixture files in the real downloads' layouts: preparation,
tokenizer, packing mode, training, evaluation and the checkpoint's tokenizer.
Their reported bits per byte follow the exact definition: bits per token times
tokens over the bytes those tokens stand for, counted here independently.
"""

import importlib.util

import numpy as np
import pytest

from conftest import REPO
from fixtures import (LM1B_HELDOUT, LM1B_TRAIN, sentences, write_lm1b_archive,
                      write_owt_texts, write_text8_zip)

from diffusion_lm import api, files, train
from diffusion_lm.data import corpora, pipeline, tokenizer_training, tokenizers


def tiny_recipe(name: str, data_dir):
  spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  config.data.data_dir = str(data_dir)
  return config


def with_sentencepiece(config, vocab_size: int):
  """Trains the recipe's sentencepiece model (small) and points the config at it."""
  builder = corpora.builder(config.data)
  model = tokenizer_training.train_model(builder, vocab_size, "bpe")
  path = f"{builder.data_dir}/spm_tiny.model"
  files.write_atomically(path, model)
  config.data.tokenizer_model = "spm_tiny.model"


def train_tiny(config, workdir) -> dict:
  result = train.train_and_evaluate(config, str(workdir))
  assert result["step"] == config.train.steps and not result["preempted"]
  saved = api.load(str(workdir)).tokenizer
  assert saved.to_json() == tokenizers.from_config(config.data, corpora.prepared_dir(config.data)).to_json()
  return result


@pytest.mark.slow
def test_text8_tiny_reports_bits_per_character(tmp_path):
  write_text8_zip(tmp_path / "manual", num_chars=20_000)
  config = tiny_recipe("text8", tmp_path / "tfds")
  corpora.prepare(config.data, manual_dir=str(tmp_path / "manual"))
  config.eval.num_t_samples = 8
  result = train_tiny(config, tmp_path / "run")
  # One character per token and no separator: the two rates are one number.
  assert result["bits_per_byte"] == pytest.approx(result["bits_per_token"], rel=1e-12)
  # The fixture's characters are uniform and independent: log2(27) bits each
  # is the truth, which a bound cannot beat and 4 steps barely approach.
  bound, stderr = result["bits_per_byte"], result["bits_per_byte_stderr"]
  assert np.log2(27) - 3 * stderr < bound < np.log2(27) + 0.5, (bound, stderr)


@pytest.mark.slow
def test_lm1b_tiny_pads_sentences_and_counts_their_kept_bytes(tmp_path):
  write_lm1b_archive(tmp_path / "manual", {
      f"{LM1B_TRAIN}/news.en-00001-of-00100": sentences(300, seed=0),
      f"{LM1B_HELDOUT}/news.en.heldout-00000-of-00050":
          sentences(30, seed=1) + [" ".join(sentences(8, seed=2))]})  # Cut.
  config = tiny_recipe("lm1b", tmp_path / "tfds")
  assert config.data.packing == "pad"
  corpora.prepare(config.data, manual_dir=str(tmp_path / "manual"))
  with_sentencepiece(config, vocab_size=320)
  result = train_tiny(config, tmp_path / "run")

  tokenizer = tokenizers.from_config(config.data, corpora.prepared_dir(config.data))
  tokens = num_bytes = truncated = 0
  for example in pipeline.source(config.data, "test"):
    ids = np.append(tokenizer.encode(example["text"]), tokenizer.eos_id)
    kept = ids[:config.data.seq_len]  # One sentence per row, truncated.
    tokens += len(kept)
    num_bytes += tokenizer.token_bytes[kept].sum()
    truncated += len(ids) > config.data.seq_len
  assert result["bits_per_byte"] == pytest.approx(
      result["bits_per_token"] * tokens / num_bytes, rel=1e-9)
  assert truncated and result["truncated_documents"] == truncated


@pytest.mark.slow
def test_openwebtext_tiny_wraps_documents_and_counts_every_byte(tmp_path):
  rng = np.random.default_rng(0)
  write_owt_texts(tmp_path / "manual", {
      f"urlsf_subset00-{i // 10}_data/{i:04d}.txt":
          "\n".join(sentences(int(rng.integers(2, 8)), seed=i)) for i in range(40)})
  config = tiny_recipe("owt", tmp_path / "tfds")
  config.data.validation_documents = 4
  corpora.prepare(config.data, manual_dir=str(tmp_path / "manual"))
  with_sentencepiece(config, vocab_size=320)
  result = train_tiny(config, tmp_path / "run")

  tokenizer = tokenizers.from_config(config.data, corpora.prepared_dir(config.data))
  docs = [ex["text"] for ex in pipeline.source(config.data, "validation")]
  assert len(docs) == 4
  tokens = sum(len(tokenizer.encode(d)) + 1 for d in docs)  # + EOS each.
  num_bytes = sum(len(d) for d in docs)
  assert result["bits_per_byte"] == pytest.approx(
      result["bits_per_token"] * tokens / num_bytes, rel=1e-9)
