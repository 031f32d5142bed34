"""diffusion_lm: masked diffusion language models in JAX/Flax."""
