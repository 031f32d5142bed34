"""Quickstart: a small model of Python source on the stdlib corpus, on a CPU.

  python -m diffusion_lm.main --config=configs/quickstart.py --workdir=runs/quickstart

Prepares the Python standard library's source (no download), trains a
4,096-piece sentencepiece tokenizer on its train split, trains, evaluates
the whole test split, checkpoints and prints samples; then

  python -m diffusion_lm.sample --workdir=runs/quickstart --num_samples=4

Expected on 2 CPU cores: 10-15 minutes in all (the tokenizer 40 s, 2,000
steps at 10,000-15,500 tokens/s) and 1.79 bits per byte on the test split
(an upper bound; the autoregressive twin reached 1.33).

What makes it learn this much in this budget (benchmarks/learning_curve.py,
docs/results/learning.md): subword tokens (each position holds about
3.5 bytes of text, so the same rows see 3.5x more of it); the input layer's
local mixing (model.local_width), without which the denoiser has to
discover where its neighbours are through attention alone; and 500 warmup
steps (0.07 bits/byte better than 100 at a 15-minute budget).
`configs/quickstart.py:ar` is its autoregressive twin.
"""

from diffusion_lm import config_base


def get_config(variant: str = ""):
  c = config_base.base_config()
  c.model.update(num_layers=4, num_heads=4, head_dim=32, embed_dim=128,
                 mlp_dim=384, batch_slices=4, local_width=2)
  c.data.update(corpus="stdlib", tokenizer="sentencepiece",
                tokenizer_model="spm_unigram_4096.model", seq_len=128)
  c.data.tokenizer_train.update(vocab_size=4096, model_type="unigram",
                                max_documents=1000)
  c.train.update(steps=2000, batch_size=32,
                 learning_rate=3e-3, warmup_steps=500, final_lr_fraction=0.0,
                 log_every=100, eval_every=500, checkpoint_every=500)
  c.eval.update(batch_size=64, batches_during_training=8, split="test")
  return config_base.variant(c, variant)
