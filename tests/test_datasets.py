"""The corpus builders (markov, text8, lm1b, openwebtext) and the prepare CLI.

No network: every downloadable corpus is prepared from small fixture files in
its real download's layout, put in a TFDS manual dir or (text8, openwebtext)
served by a local HTTP server.
"""

import contextlib
import functools
import http.server
import io
import itertools
import json
import math
import os
import sys
import tarfile
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import TINY_CONFIG, load_tiny_config, run_module
from fixtures import (LM1B_HELDOUT, LM1B_ROOT, LM1B_TRAIN, add_file,
                      write_lm1b_archive, write_owt_texts, write_text8_zip)

from diffusion_lm import errors
from diffusion_lm.data import builder_base, corpora, lm1b, markov, openwebtext, text8


def prepared(builder, manual_dir=None):
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  assert "tensorflow" not in sys.modules
  return builder


def documents(builder, split) -> list[tuple[str, bytes]]:
  """(path, text) of a split's examples, in the order the source gives them."""
  return [(ex["path"].decode(), ex["text"]) for ex in builder.as_data_source(split)]


# ---------------------------------------------------------------- markov

SMALL_CHAIN = dict(alphabet_size=3, order=2, concentration=0.5,
                   min_document_length=0,
                   num_documents=300, document_length=120, seed=3)


def stationary_by_power(transitions, order):
  """pi over k-tuples by iterating the chain (independent of markov.py's solve)."""
  num_states, a = transitions.shape
  pi = np.full(num_states, 1.0 / num_states)
  for _ in range(5000):
    nxt = np.zeros(num_states)
    for s in range(num_states):
      for sym in range(a):
        nxt[(s % a**(order - 1)) * a + sym] += pi[s] * transitions[s, sym]
    pi = nxt
  return pi


def binary_entropy(p):
  return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def test_markov_entropy_rate_of_a_two_state_chain_has_its_closed_form():
  params = dict(SMALL_CHAIN, alphabet_size=2, order=1, document_length=10)
  p = markov.transition_matrix(params)
  p01, p10 = p[0, 1], p[1, 0]
  pi0 = p10 / (p01 + p10)
  rate = pi0 * binary_entropy(p01) + (1 - pi0) * binary_entropy(p10)
  entropy = markov.entropy_bits(params)
  assert entropy["entropy_rate_bits"] == pytest.approx(rate, rel=1e-12)
  assert entropy["initial_entropy_bits"] == pytest.approx(binary_entropy(pi0))
  assert entropy["document_entropy_bits"] == pytest.approx(
      binary_entropy(pi0) + 9 * rate)


@pytest.mark.parametrize("alphabet_size,order,length", [(3, 2, 5), (2, 3, 7)])
def test_markov_document_entropy_equals_enumeration_of_all_documents(
    alphabet_size, order, length):
  params = dict(SMALL_CHAIN, alphabet_size=alphabet_size, order=order,
                document_length=length)
  p = markov.transition_matrix(params)
  pi = stationary_by_power(p, order)
  entropy = 0.0
  total = 0.0
  for doc in itertools.product(range(alphabet_size), repeat=length):
    state = int(np.dot(doc[:order], alphabet_size**np.arange(order - 1, -1, -1)))
    prob = pi[state]
    for sym in doc[order:]:
      prob *= p[state, sym]
      state = (state % alphabet_size**(order - 1)) * alphabet_size + sym
    total += prob
    entropy -= prob * math.log2(prob)
  assert total == pytest.approx(1.0)
  assert markov.entropy_bits(params)["document_entropy_bits"] == pytest.approx(
      entropy, rel=1e-9)


def test_markov_variable_lengths_match_enumeration_of_all_documents():
  # Bugs caught: a wrong length term in the entropy, or a wrong state update
  # or initial term in document_log2_probs (the truth bounds are tested on).
  params = dict(SMALL_CHAIN, alphabet_size=3, order=2, document_length=5,
                min_document_length=3)
  p = markov.transition_matrix(params)
  pi = stationary_by_power(p, 2)
  docs, probs = [], []
  for length in (3, 4, 5):
    for doc in itertools.product(range(3), repeat=length):
      state, prob = doc[0] * 3 + doc[1], 1 / 3
      prob *= pi[state]
      for sym in doc[2:]:
        prob *= p[state, sym]
        state = (state % 3) * 3 + sym
      docs.append(doc)
      probs.append(prob)
  probs = np.array(probs)
  assert probs.sum() == pytest.approx(1.0)
  np.testing.assert_allclose(markov.document_log2_probs(params, docs),
                             -np.log2(probs), rtol=1e-9)
  assert markov.entropy_bits(params)["document_entropy_bits"] == pytest.approx(
      -(probs * np.log2(probs)).sum(), rel=1e-9)
  with pytest.raises(ValueError, match="not a document of this corpus"):
    markov.document_log2_probs(params, [(0, 1)])  # Shorter than the minimum.


@pytest.fixture(scope="module")
def markov_builder(tmp_path_factory):
  config = load_tiny_config(tmp_path_factory.mktemp("tfds_markov"))
  config.data.corpus = "markov"
  config.data.markov.update(SMALL_CHAIN)
  return corpora.builder(config.data)  # Prepared on first use.


def test_markov_splits_hold_90_5_5_of_the_documents(markov_builder):
  sizes = {s: len(markov_builder.as_data_source(s)) for s in builder_base.SPLITS}
  assert sizes == {"train": 270, "validation": 15, "test": 15}
  paths = [p for s in builder_base.SPLITS for p, _ in documents(markov_builder, s)]
  assert sorted(paths) == [f"doc{i:07d}" for i in range(300)]
  assert markov.split_ranges(3) == {"train": range(0, 1), "validation": range(1, 2),
                                    "test": range(2, 3)}


def test_markov_documents_follow_the_chain(markov_builder):
  a, k = SMALL_CHAIN["alphabet_size"], SMALL_CHAIN["order"]
  p = markov.transition_matrix(SMALL_CHAIN)
  pi = stationary_by_power(p, k)
  texts = [t for s in builder_base.SPLITS for _, t in documents(markov_builder, s)]
  docs = np.frombuffer(b"".join(texts), np.uint8).reshape(len(texts), -1) - ord("a")
  assert docs.shape == (300, SMALL_CHAIN["document_length"]) and docs.max() < a
  states = docs[:, :-1] * a + docs[:, 1:]  # k = 2: every window of two symbols.
  counts = np.zeros((a**k, a))
  np.add.at(counts, (states[:, :-1], docs[:, 2:]), 1)
  empirical = counts / counts.sum(axis=1, keepdims=True)
  assert np.abs(empirical - p).max() < 0.03
  # Stationary from the first symbol on: every window, the first included.
  window_freq = np.bincount(states.ravel(), minlength=a**k) / states.size
  assert np.abs(window_freq - pi).max() < 0.01
  # The first pair comes from pi, not uniformly (max |pi - 1/9| is 0.07):
  # 20,000 two-symbol documents put its frequencies within 0.015.
  starts = markov.sample_documents(dict(SMALL_CHAIN, num_documents=20_000,
                                        document_length=2)).astype(int)
  first_freq = np.bincount(starts[:, 0] * a + starts[:, 1], minlength=a**k)
  assert np.abs(first_freq / len(starts) - pi).max() < 0.015


def test_markov_metadata_round_trips_and_config_name_has_every_parameter(
    markov_builder):
  expected = dict(SMALL_CHAIN, **markov.entropy_bits(SMALL_CHAIN))
  with open(os.path.join(markov_builder.data_dir, "metadata.json")) as f:
    assert json.load(f) == pytest.approx(expected)
  reloaded = markov.Markov(config=markov.MarkovConfig(SMALL_CHAIN),
                           data_dir=markov_builder.data_dir_root)
  assert reloaded.is_prepared() and dict(reloaded.info.metadata) == pytest.approx(expected)
  assert markov_builder.builder_config.name == "a3_k2_c0p5_docs300_len120_seed3"
  changed = [dict(SMALL_CHAIN, **{field: SMALL_CHAIN[field] + 1})
             for field in markov.FIELDS if field != "min_document_length"]
  changed.append(dict(SMALL_CHAIN, min_document_length=2))
  names = {markov.MarkovConfig(params).name for params in [SMALL_CHAIN] + changed}
  assert len(names) == 1 + len(markov.FIELDS)


@pytest.mark.parametrize("field,value", [("alphabet_size", 27), ("order", 0),
                                         ("concentration", 0.0),
                                         ("num_documents", 2)])
def test_markov_bad_parameters_name_the_field(field, value):
  with pytest.raises(errors.UserError, match=f"data.markov.{field}={value!r}"):
    markov.entropy_bits(dict(SMALL_CHAIN, **{field: value}))


# ---------------------------------------------------------------- text8

def test_text8_splits_are_90_5_5_slices_in_ordered_chunks(tmp_path):
  text = write_text8_zip(tmp_path / "manual")
  builder = prepared(text8.Text8(config=text8.Text8Config(chunk_chars=170),
                                 data_dir=tmp_path / "tfds",
                                 file_format="array_record"), tmp_path / "manual")
  assert text8.split_bounds(100_000_000) == {
      "train": (0, 90_000_000), "validation": (90_000_000, 95_000_000),
      "test": (95_000_000, 100_000_000)}
  bounds = text8.split_bounds(len(text))
  assert bounds == {"train": (0, 2700), "validation": (2700, 2850),
                    "test": (2850, 3001)}
  for split, (start, stop) in bounds.items():
    chunks = documents(builder, split)
    assert b"".join(t for _, t in chunks) == text[start:stop]
    assert [p for p, _ in chunks] == [f"text8:{o}" for o in range(start, stop, 170)]
    assert all(len(t) == 170 for _, t in chunks[:-1]) and 0 < len(chunks[-1][1]) <= 170
  assert len(documents(builder, "train")) == 16


@contextlib.contextmanager
def serving(directory):
  """A local HTTP server of `directory`'s files; yields its base URL."""

  class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(
      ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}"
  finally:
    server.shutdown()
    server.server_close()


def test_text8_is_downloaded_when_not_in_the_manual_dir(tmp_path, monkeypatch):
  text = write_text8_zip(tmp_path / "served", num_chars=500, seed=1)
  with serving(tmp_path / "served") as url:
    monkeypatch.setattr(text8, "URL", f"{url}/text8.zip")
    builder = prepared(text8.Text8(data_dir=tmp_path / "tfds",
                                   file_format="array_record"))
  assert documents(builder, "test") == [("text8:475", text[475:])]


def test_failed_download_asks_for_a_manual_dir(tmp_path, monkeypatch):
  def no_network(*args, **kwargs):
    raise OSError("Network is unreachable")

  monkeypatch.setattr(tfds.download.DownloadManager, "download", no_network)
  builder = text8.Text8(data_dir=tmp_path, file_format="array_record")
  with pytest.raises(errors.UserError, match=r"^cannot download text8.zip \(OSError: "
                     r"Network is unreachable\); put text8.zip in a directory "
                     "and pass it as --manual_dir$"):
    builder.download_and_prepare()


# ---------------------------------------------------------------- lm1b

LM1B_FILES = {
    f"{LM1B_TRAIN}/news.en-00001-of-00100":
        ["The cat sat on the mat .", "  Prices rose 3 % in May .  ", "Café au lait ."],
    f"{LM1B_TRAIN}/news.en-00002-of-00100": ["He said : \" no . \"", "It rained ."],
    f"{LM1B_HELDOUT}/news.en.heldout-00000-of-00050": ["A held out sentence ."],
    f"{LM1B_HELDOUT}/news.en.heldout-00001-of-00050": ["Another one .", "And a third ."],
    f"{LM1B_ROOT}/README": ["This is not a sentence of the corpus ."],
}


def test_lm1b_train_and_test_are_tfds_shards_and_validation_is_test(tmp_path):
  write_lm1b_archive(tmp_path / "manual", LM1B_FILES)
  builder = prepared(lm1b.Lm1b(data_dir=tmp_path / "tfds", file_format="array_record"),
                     tmp_path / "manual")

  def expected(directory):
    return sorted((f"{os.path.basename(name)}:{i}", line.strip().encode())
                  for name, lines in LM1B_FILES.items()
                  if os.path.dirname(name) == directory
                  for i, line in enumerate(lines))

  assert sorted(documents(builder, "train")) == expected(LM1B_TRAIN)
  assert sorted(documents(builder, "test")) == expected(LM1B_HELDOUT)
  assert sorted(documents(builder, "validation")) == expected(LM1B_HELDOUT)


# ---------------------------------------------------------------- openwebtext

OWT_SUBSETS = {  # In no particular order, as in the archives.
    "urlsf_subset00-2_data": {"0002-b.txt": "Two b.", "0002-a.txt": "Two a.\n"},
    "urlsf_subset00-1_data": {"0001-c.txt": "One c.", "0001-a.txt": "\n  One a.  \n",
                              "0001-b.txt": "One\n\n\n\n\nb.\n\n\nend"},
    "urlsf_subset00-10_data": {"0010-a.txt": "Ten a.", "0010-b.txt": "Ten b."},
}
# Sorted by identifier: subset 00-10 < 00-1 < 00-2 ('0' < '_'), then file name.
OWT_ORDER = ["Ten a.", "Ten b.", "One a.", "One\n\nb.\n\nend", "One c.", "Two a.",
             "Two b."]


def subset_xz(docs: dict[str, str]) -> bytes:
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w:xz") as f:
    for name, text in docs.items():
      add_file(f, name, text.encode())
  return buffer.getvalue()


def write_owt(manual, layout):
  """The fixture documents in one of the layouts the builder reads."""
  if layout == "extracted .txt":
    write_owt_texts(manual, {f"{subset}/{name}": text
                             for subset, docs in OWT_SUBSETS.items()
                             for name, text in docs.items()})
    return
  (manual / "openwebtext").mkdir(parents=True)
  if layout == "urlsf_subset*.xz":  # openwebtext.tar.xz extracted.
    for subset, docs in OWT_SUBSETS.items():
      (manual / "openwebtext" / f"{subset}.xz").write_bytes(subset_xz(docs))
    return
  if layout == "openwebtext.tar.xz":
    groups = {"openwebtext.tar.xz": list(OWT_SUBSETS)}
  else:  # Hugging Face's subsets/urlsf_subsetNN.tar, in the manual dir or served.
    groups = {"urlsf_subset00.tar": list(OWT_SUBSETS)[:2],
              "urlsf_subset01.tar": list(OWT_SUBSETS)[2:]}
  for archive, subsets in groups.items():
    with tarfile.open(manual / archive, "w:xz" if archive.endswith("xz") else "w") as f:
      for subset in subsets:
        add_file(f, f"openwebtext/{subset}.xz", subset_xz(OWT_SUBSETS[subset]))


@pytest.mark.parametrize("layout", ["openwebtext.tar.xz", "urlsf_subset00.tar",
                                    "urlsf_subset*.xz", "extracted .txt",
                                    "downloaded"])
def test_openwebtext_validation_is_the_last_documents_by_identifier(
    tmp_path, monkeypatch, layout):
  manual = tmp_path / "manual"
  write_owt(manual, layout)
  owt = openwebtext.OpenWebText(
      config=openwebtext.OpenWebTextConfig(validation_documents=3),
      data_dir=tmp_path / "tfds", file_format="array_record")
  if layout == "downloaded":  # Hugging Face's subsets, served from `manual`.
    with serving(manual) as url:
      monkeypatch.setattr(openwebtext, "HF_URLS", [
          f"{url}/urlsf_subset00.tar", f"{url}/urlsf_subset01.tar"])
      builder = prepared(owt)
  else:
    builder = prepared(owt, manual)
  assert set(builder.info.splits) == {"train", "validation"}
  splits = {s: dict(documents(builder, s)) for s in ("train", "validation")}
  in_order = [t.decode() for _, t in sorted({**splits["train"], **splits["validation"]}.items())]
  assert in_order == OWT_ORDER
  assert sorted(t.decode() for t in splits["validation"].values()) == sorted(OWT_ORDER[-3:])
  prefix = "openwebtext/" if layout == "extracted .txt" else ""
  assert sorted(splits["validation"]) == [
      f"{prefix}urlsf_subset00-1_data/0001-c.txt",
      f"{prefix}urlsf_subset00-2_data/0002-a.txt",
      f"{prefix}urlsf_subset00-2_data/0002-b.txt"]


def test_openwebtext_validation_start_counts_from_the_end():
  shards = [[0] * 2, [0] * 3, [0] * 2]
  assert openwebtext.validation_start(shards, 1) == (2, 1)
  assert openwebtext.validation_start(shards, 2) == (2, 0)
  assert openwebtext.validation_start(shards, 4) == (1, 1)
  assert openwebtext.validation_start(shards, 6) == (0, 1)
  with pytest.raises(errors.UserError, match="has 7 documents: holding out data."
                     "validation_documents=7 leaves none for training"):
    openwebtext.validation_start(shards, 7)


# ---------------------------------------------------------------- registry, CLI

def test_unknown_corpus_names_the_choices(tmp_path):
  config = load_tiny_config(tmp_path)
  config.data.corpus = "wikitext"
  with pytest.raises(errors.UserError, match=r"data.corpus='wikitext' is not one of "
                     r"\['lm1b', 'markov', 'openwebtext', 'stdlib', 'text8', 'text_files'\]"):
    corpora.builder(config.data)


@pytest.mark.parametrize("corpus", ["text8", "lm1b", "openwebtext"])
def test_unprepared_download_is_refused_without_writing(tmp_path, corpus):
  # Bug caught: an unprepared download started (or files written) by a run.
  config = load_tiny_config(tmp_path)
  config.data.corpus = corpus
  with pytest.raises(errors.NotPrepared) as error:
    corpora.builder(config.data)
  assert (error.value.corpus, error.value.data_dir) == (corpus, str(tmp_path))
  assert not os.listdir(tmp_path)  # Nothing was downloaded or written.


@pytest.mark.slow
def test_command_lines_print_the_prepare_command_for_their_flags(tmp_path):
  # Bug caught: a prepare command that drops the user's --config or its
  # data overrides (the openwebtext builder depends on validation_documents).
  flags = [f"--config={TINY_CONFIG}", "--config.data.corpus=openwebtext",
           "--config.data.validation_documents=7",
           f"--config.data.data_dir={tmp_path}"]
  result = run_module("diffusion_lm.main", *flags, "--config.train.steps=2",
                      "--config.eval.split=validation",
                      f"--workdir={tmp_path / 'run'}", check=False)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: data.corpus='openwebtext' is not prepared in {tmp_path}; "
      f"prepare it with: python -m diffusion_lm.prepare {flags[0]} "
      f"{flags[1]} {flags[2]} --config.train.steps=2 "
      f"--config.eval.split=validation --config.data.data_dir={tmp_path}")


@pytest.mark.slow
def test_prepare_cli_prepares_text8_from_a_manual_dir(tmp_path):
  text = write_text8_zip(tmp_path / "manual", num_chars=250_000)
  data_dir = tmp_path / "tfds"
  result = run_module("diffusion_lm.prepare", f"--config={TINY_CONFIG}",
                      "--config.data.corpus=text8", f"--config.data.data_dir={data_dir}",
                      f"--manual_dir={tmp_path / 'manual'}")
  lines = result.stdout.splitlines()[-5:]  # After TFDS's own lines.
  assert lines[0] == (f"data.corpus='text8' is prepared in "
                      f"{data_dir}/text8/chunks100000/1.0.0")
  assert [line.split() for line in lines[1:]] == [
      ["split", "documents", "bytes"], ["train", "3", "225,000"],
      ["validation", "1", "12,500"], ["test", "1", "12,500"]]
  config = load_tiny_config(data_dir)
  config.data.corpus = "text8"
  train = corpora.builder(config.data).as_data_source("train")
  assert b"".join(ex["text"] for ex in train) == text[:225_000]
  bad = run_module("diffusion_lm.prepare", f"--config={TINY_CONFIG}",
                   f"--config.data.data_dir={data_dir}", "--config.data.corpus=text8",
                   f"--manual_dir={tmp_path / 'missing'}", check=False)
  assert bad.returncode == 1
  assert bad.stderr.strip().splitlines()[-1] == (
      f"error: --manual_dir='{tmp_path / 'missing'}' is not a directory")
