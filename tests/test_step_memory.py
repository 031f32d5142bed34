"""validation.check's memory rule: the train step's estimated bytes per
device (step_memory.per_device) against what a device has."""

import dataclasses
import re

import jax
import pytest

from diffusion_lm import errors, step_memory, train, validation
from test_budget import recipe

GIB = 2**30


@dataclasses.dataclass
class FakeAccelerator:
  """A device as validation sees it: platform, process and allocator."""
  process_index: int = 0
  bytes_limit: int | None = 60 * GIB  # An H100 under XLA's default 75%.
  platform: str = "gpu"

  def memory_stats(self):
    return None if self.bytes_limit is None else {
        "bytes_limit": self.bytes_limit}


def test_a_step_that_cannot_fit_stops_before_the_workdir(tiny_config, tmp_path):
  # Catches: a model too large for the host passing the check and failing
  # in its first step with an out-of-memory traceback, after writing the
  # workdir; the rule applied by the command line's device-free check.
  tiny_config.model.embed_dim = 4_000_000_000
  validation.check(tiny_config)
  workdir = tmp_path / "run"
  with pytest.raises(errors.UserError) as e:
    train.train_and_evaluate(tiny_config, str(workdir))
  assert re.fullmatch(
      r"the train step on mesh data=8, fsdp=1, tensor=1 needs [0-9.]+ GiB per "
      r"device, more than [0-9.]+ GiB \([0-9.]+ GiB of host memory shared by "
      r"8 CPU devices\): try a larger mesh.fsdp \(now 1\) or mesh.tensor "
      r"\(now 1\)", str(e.value)), str(e.value)
  assert not workdir.exists()


@pytest.mark.slow
def test_accelerators_are_held_to_their_allocators_limit(tiny_config):
  # Catches: an accelerator's memory not read (or read from another
  # process's devices), the smallest device not the one that counts, a
  # device that reports no memory or an estimate within its error of the
  # memory refused; a rule so strict that a shipped
  # recipe no longer starts on the hardware its docstring trains it on (the
  # largest: OpenWebText on 8 nodes of 8 H100s) or the quickstart on this
  # CPU.
  tiny_config.model.update(num_layers=1, embed_dim=2048, mlp_dim=8192)
  # 0.78 GiB per device on 8 devices: 4 of this process, one of them with
  # half a GiB, and 4 of another process with less.
  devices = ([FakeAccelerator(bytes_limit=2 * GIB)] * 3
             + [FakeAccelerator(bytes_limit=GIB // 2)]
             + [FakeAccelerator(process_index=1, bytes_limit=GIB // 64)] * 4)
  with pytest.raises(errors.UserError, match=(
      r"^the train step on mesh data=8, fsdp=1, tensor=1 needs 0.78 GiB per "
      r"device, more than 0.50 GiB \(the GPU allocator's limit\): try ")):
    step_memory.check(tiny_config, devices)
  # 0.78 GiB is within the estimate's error of 0.7 GiB: it may fit.
  devices[3] = FakeAccelerator(bytes_limit=int(0.7 * GIB))
  step_memory.check(tiny_config, devices)
  devices[:4] = [FakeAccelerator(bytes_limit=None)] * 4
  step_memory.check(tiny_config, devices)
  owt = recipe("owt")
  owt.data.tokenizer_train.vocab_size = 50257  # Its model's size.
  step_memory.check(owt, [FakeAccelerator(process_index=i // 8)
                          for i in range(64)])
  step_memory.check(recipe("quickstart"), jax.devices()[:1])
