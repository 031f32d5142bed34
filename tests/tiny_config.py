"""A tiny model on a tiny corpus: the tests' config (set data.files)."""

from diffusion_lm import config_base


def get_config():
  c = config_base.base_config()
  c.model.update(num_layers=2, num_heads=2, head_dim=16, embed_dim=32, mlp_dim=64)
  c.data.update(corpus="text_files", seq_len=32)
  c.train.update(steps=24, batch_size=8, learning_rate=3e-3, warmup_steps=4,
                 log_every=4, eval_every=12, checkpoint_every=6)
  c.eval.update(batch_size=8, batches_during_training=2)
  c.sample.update(num_samples=2, steps=8)
  return c
