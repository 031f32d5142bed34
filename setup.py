"""Installs diffusion_lm: masked diffusion language models in JAX/Flax."""

import setuptools

setuptools.setup(
    name="diffusion_lm",
    version="0.1.0",
    description="Masked diffusion language models in JAX/Flax, from one CPU to TPU pods.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["diffusion_lm", "diffusion_lm.*"]),
    install_requires=[
        "absl-py>=2.1",
        "array-record>=0.8",
        "flax>=0.12.8",
        "grain>=0.2.18",
        "importlib-resources",  # Needed by tensorflow-datasets builders.
        "jax>=0.10.2",
        "matplotlib>=3.8",  # Plots: benchmarks, diffusion_lm.plot, notebooks.
        "ml-collections>=1.1",
        "numpy>=2.0",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "sentencepiece>=0.2",
        "tensorboardX>=2.6",
        "tensorflow-datasets>=4.9.10",
        "tqdm>=4.60",  # Progress bars (TFDS depends on it too).
    ],
    extras_require={
        # nbclient, nbformat and ipykernel run the notebooks in colab/.
        "test": ["pytest>=8", "scipy>=1.11", "nbclient>=0.10", "nbformat>=5.10",
                 "ipykernel>=6.29"],
        # gs:// workdirs: files through gcsfs (etils.epath), TensorBoard
        # events through google-cloud-storage (tensorboardX).
        "gcs": ["gcsfs", "google-cloud-storage"],
        "tpu": ["jax[tpu]>=0.10.2"],
        "cuda": ["jax[cuda12]>=0.10.2"],
    },
)
