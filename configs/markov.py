"""A Markov chain of known entropy: the corpus where samples can be judged exactly.

Documents of 63 symbols from a random order-1 chain over 8 letters
(data.markov), one per row of 64 with its EOS. The chain gives every sample's
exact likelihood and the true statistics of its symbol pairs, which is what
benchmarks/sampling.py and benchmarks/diffusion_vs_ar.py measure samplers by.

  python -m diffusion_lm.main --config=configs/markov.py --workdir=runs/markov

On 2 CPU cores: 6.3 minutes (378 s, corpus preparation included); the test
split's bound 1.045 +- 0.010 bits/token against the chain's exact 1.031 (a
document's 65.97 bits over its 64 tokens, EOS included). The AR twin
(`configs/markov.py:ar`, 324 s) reaches 1.037 exactly.
"""

from diffusion_lm import config_base


def get_config(variant: str = ""):
  c = config_base.base_config()
  c.model.update(num_layers=4, num_heads=4, head_dim=32, embed_dim=128,
                 mlp_dim=384, batch_slices=4, local_width=2)
  c.data.update(corpus="markov", packing="pad", seq_len=64)
  c.data.markov.update(alphabet_size=8, order=1, concentration=0.1,
                       num_documents=20_000, document_length=63, seed=0)
  c.train.update(steps=2000, batch_size=32, learning_rate=3e-3,
                 warmup_steps=100, final_lr_fraction=0.0, log_every=200,
                 eval_every=1000, checkpoint_every=1000)
  c.eval.update(batch_size=64, batches_during_training=4, num_t_samples=4)
  return config_base.variant(c, variant)
