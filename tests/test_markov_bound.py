"""The bound against a known truth: a small model trained briefly on the
markov corpus, whose exact entropy the builder computes.

Rows hold one document each (31 symbols + EOS), so the true cost per symbol is
H(X_1..X_31) / 31. The NELBO bounds -log p, so the reported bits per byte must
lie above it (up to Monte Carlo noise) and, once trained, close to it: far
below the entropy of the symbol frequencies, all a model that ignores context
could reach.
"""

import numpy as np

from diffusion_lm import train
from diffusion_lm.data import markov

CHAIN = dict(alphabet_size=4, order=1, concentration=0.3, num_documents=1200,
             document_length=31, seed=0)
STEPS = 400


def unigram_entropy_bits(params) -> float:
  counts = np.bincount(markov.sample_documents(params).ravel())
  p = counts / counts.sum()
  return float(-(p * np.log2(p)).sum())


def test_bound_lies_above_the_entropy_and_approaches_it(tiny_config, tmp_path):
  config = tiny_config
  config.data.update(corpus="markov", packing="pad", seq_len=32)
  config.data.markov.update(CHAIN)
  config.model.update(num_layers=2, num_heads=4, head_dim=16, embed_dim=64,
                      mlp_dim=128)
  config.train.update(steps=STEPS, batch_size=32, learning_rate=3e-3,
                      warmup_steps=20, log_every=100, eval_every=STEPS,
                      checkpoint_every=STEPS)
  # 60 test documents x 16 times each: Monte Carlo error about 0.01 bits.
  config.eval.update(batch_size=64, num_t_samples=16)
  config.sample.num_samples = 0
  bound = train.train_and_evaluate(config, str(tmp_path))["bits_per_byte"]

  truth = markov.entropy_bits(CHAIN)["document_entropy_bits"] / 31
  unigram = unigram_entropy_bits(CHAIN)
  assert truth - 0.03 < bound < truth + 0.1 < unigram - 0.3, (bound, truth, unigram)
