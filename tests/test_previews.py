"""Samples while training: TensorBoard text at each evaluation, drawn as the
inference API draws them."""

import glob
import os
import struct

import jax
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from conftest import STEPS, TRAIN_OVERRIDES

from diffusion_lm import api, config_base, metrics, models, previews
from diffusion_lm.data import tokenizers


def tensorboard_texts(workdir) -> dict[int, str]:
  """{step: text} of the text summaries in a workdir's TensorBoard events."""
  texts = {}
  for path in glob.glob(os.path.join(workdir, "tensorboard", "*")):
    data, i = open(path, "rb").read(), 0
    while i < len(data):  # TFRecords: length, its CRC, the event, its CRC.
      (n,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 16 + n
      for value in event.summary.value:
        if value.tag == "samples/text_summary":
          texts[event.step] = value.tensor.string_val[0].decode()
  return texts


def test_each_evaluation_writes_samples_to_tensorboard_only(reference):
  # Bug: no samples in TensorBoard, or text leaking into metrics.jsonl.
  workdir, _ = reference
  texts = tensorboard_texts(workdir)
  every = TRAIN_OVERRIDES["train.eval_every"]
  assert sorted(texts) == list(range(every, STEPS + 1, every))
  assert all(text.count("**sample ") == 2 for text in texts.values())
  for record in metrics.read_jsonl(workdir):
    assert not any(isinstance(v, str) for v in record.values())


@pytest.mark.parametrize("objective", ["diffusion", "autoregressive"])
@pytest.mark.slow
def test_previews_sample_as_the_api_does(objective):
  # Bug: previews with another sampler, schedule, BOS or seed than load().
  config = config_base.base_config()
  config.model.update(objective=objective, num_layers=1, num_heads=2,
                      head_dim=8, embed_dim=16, mlp_dim=32,
                      time_conditioning=objective == "diffusion")
  config.data.seq_len = 16
  config.diffusion.schedule = "cosine"
  config.sample.update(num_samples=6, steps=5, temperature=0.7)
  tokenizer = tokenizers.ByteTokenizer()
  cfg = models.TransformerConfig.from_config(config.model, tokenizer.vocab_size)
  graphdef, _ = models.abstract_model(cfg)
  leaves, tree = jax.tree.flatten(models.init_params(cfg, jax.random.PRNGKey(0)))
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = tree.unflatten([jax.random.normal(k, x.shape)
                           for k, x in zip(keys, leaves)])  # Not uniform.
  kind = api.DiffusionLM if objective == "diffusion" else api.AutoregressiveLM
  lm = kind(graphdef, params, config, tokenizer, mesh=None)
  texts = previews.Previews(config, tokenizer, graphdef).texts(params)
  assert len(texts) == previews.PREVIEWS
  assert texts == lm.sample(previews.PREVIEWS)
  assert len(set(texts)) > 1
  assert np.mean([len(t) for t in texts]) > 0
