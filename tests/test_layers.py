"""The package's imports run one way: each module imports only modules of its
own layer or lower (docs/design.md, "Layering"), so there are no circles."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "diffusion_lm"

# Lowest first. A module not listed is an error: new modules take a layer.
LAYERS = {
    "foundation": ["errors", "files", "batching", "parallel"],
    "core": ["diffusion", "diffusion.schedules", "diffusion.objective",
             "diffusion.sampler_options", "diffusion.sampling_rules",
             "diffusion.samplers", "models.transformer", "models",
             "autoregressive"],
    "data": ["data.builder_base", "data.local_files", "data.markov",
             "data.text8", "data.lm1b", "data.openwebtext", "data.corpora",
             "data.packing", "data.pipeline", "data.tokenizers",
             "data.tokenizer_training", "data"],
    "infrastructure": ["config_base", "validation", "workdir_lock", "metrics",
                       "checkpoint_integrity", "checkpoints", "chain_oracle",
                       "quality"],
    "library": ["train_step", "step_memory", "evaluation", "previews", "train",
                "api", ""],
    "entry points": ["cli", "main", "sample", "budget", "plot", "prepare",
                     "train_tokenizer"],
}
RANK = {m: (i, j) for i, mods in enumerate(LAYERS.values())
        for j, m in enumerate(mods)}


def _name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
  """Package modules `path` imports, at any depth of its code."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and (
        node.module.startswith("diffusion_lm")):
      base = node.module.removeprefix("diffusion_lm").lstrip(".")
      for alias in node.names:
        full = f"{base}.{alias.name}".lstrip(".")
        found.add(full if full in RANK else base)
    elif isinstance(node, ast.Import):
      found |= {a.name.removeprefix("diffusion_lm").lstrip(".")
                for a in node.names if a.name.startswith("diffusion_lm")}
  return found


MODULES = {_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer():
  # Catches: a new module that nobody placed (its imports then go unchecked).
  assert sorted(set(MODULES) - set(RANK)) == []
  assert sorted(set(RANK) - set(MODULES)) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_or_sideways_to_an_earlier_module(module):
  # Catches: an import from a higher layer (evaluation importing api back,
  # validation importing train, cli importing validation), and within a layer
  # an import of a module listed after it, so that a circle cannot form.
  upward = [m for m in MODULES[module] - {module}
            if RANK[m] >= RANK[module] and m != ""]
  assert not upward, f"{module} imports {upward}, listed at or above it"
