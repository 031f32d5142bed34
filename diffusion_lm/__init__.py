"""diffusion_lm: masked diffusion language models in JAX/Flax.

  import diffusion_lm
  lm = diffusion_lm.load("runs/quickstart")
"""


def __getattr__(name):
  # Imported on first use, so the command lines start fast.
  if name == "load":
    from diffusion_lm.api import load  # pylint: disable=g-import-not-at-top
    return load
  raise AttributeError(f"module 'diffusion_lm' has no attribute {name!r}")
