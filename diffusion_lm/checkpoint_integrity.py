"""Checkpoint integrity: checksums, the fallback past damaged checkpoints,
and where failed ones go.

`fingerprint` gives a checksum of every array (the same on any mesh) and the
arrays that are not finite; `digest` a SHA-256 of a JSON item. Any failure to
read a checkpoint (a damaged or missing file or item, a config field of the
wrong type) becomes a CorruptCheckpoint (`unreadable` names its root cause),
as does one whose contents differ from its saved checksums (`verify`).
`newest_intact` falls back from such a checkpoint to the newest one that
passes, logging which and why, and `move_aside` moves the failed ones to
<workdir>/unreadable_checkpoints/. While orbax reads a damaged checkpoint,
its other reads in flight fail as noise; ORPHANED_READS silences exactly
that noise.
"""

import contextlib
import hashlib
import json
import logging as std_logging
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from diffusion_lm import errors

CHECKSUMS = "checksums"  # The checkpoint's item that holds them.
UNREADABLE = "unreadable_checkpoints"  # In the workdir: failed checkpoints.
_T = TypeVar("_T")


class CorruptCheckpoint(ValueError):
  """A checkpoint that cannot be read, or whose contents differ from the
  checksums saved with it."""


def _as_uint32(x):
  """An array's bits as uint32 (8-byte values as two)."""
  if x.dtype.itemsize in (4, 8):
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if x.dtype.itemsize == 2:
    return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
  return x.astype(jnp.uint32)


def _checksum(x):
  """A uint32 hash of an array's values and positions: murmur3's finaliser
  of every element's bits mixed with its index, summed modulo 2^32. Integer
  arithmetic is exact in any order, so the sum is the same on any mesh."""
  bits = _as_uint32(x)
  index, stride = jnp.zeros(bits.shape, jnp.uint32), 1
  for axis in reversed(range(bits.ndim)):
    index += (jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis)
              * jnp.uint32(stride % 2**32))
    stride *= bits.shape[axis]
  h = bits ^ (index * jnp.uint32(0x9E3779B9))
  h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
  h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
  return jnp.sum(h ^ (h >> 16), dtype=jnp.uint32)


def _finite(x):
  if jnp.issubdtype(x.dtype, jnp.inexact):
    return jnp.all(jnp.isfinite(x))
  return jnp.bool_(True)


@jax.jit
def _fingerprints(items):
  return jax.tree.map(_checksum, items), jax.tree.map(_finite, items)


def fingerprint(items: dict) -> tuple[dict[str, dict[str, int]], list[str]]:
  """Checksums of a dict of array trees ({item: {path: checksum}}) and the
  names of the arrays holding a NaN or an infinity ("params['embed']")."""
  sums, finite = jax.device_get(_fingerprints(items))
  checksums = {name: {} for name in items}
  for path, value in jax.tree_util.tree_flatten_with_path(sums)[0]:
    checksums[path[0].key][jax.tree_util.keystr(path[1:])] = int(value)
  nonfinite = [path[0].key + jax.tree_util.keystr(path[1:])
               for path, ok in jax.tree_util.tree_flatten_with_path(finite)[0]
               if not ok]
  return checksums, nonfinite


def digest(value) -> str:
  """SHA-256 of a JSON item as it reads back (tuples as lists)."""
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def listed(names: list[str], most: int = 3) -> str:
  more = f" and {len(names) - most} more" if len(names) > most else ""
  return ", ".join(names[:most]) + more


def unreadable(error: Exception, doing: str) -> CorruptCheckpoint:
  """`error`, raised while `doing` something with a checkpoint, as a
  CorruptCheckpoint that gives its root cause (orbax wraps tensorstore's read
  errors in a bare Exception). An interrupt inside it is raised again, never
  swallowed."""
  cause = error
  while cause.__cause__ is not None:
    cause = cause.__cause__
  if isinstance(cause, (KeyboardInterrupt, SystemExit)):
    raise cause
  corrupt = CorruptCheckpoint(f"{doing}: {type(cause).__name__}: {cause}")
  corrupt.__cause__ = error
  return corrupt


def _is_orphaned_read(unraisable) -> bool:
  """'Event loop is closed', or a read coroutine closed unfinished (orbax
  wraps even the GeneratorExit that closes it in an Exception)."""
  error = unraisable.exc_value
  return ((isinstance(error, RuntimeError)
           and str(error) == "Event loop is closed")
          or isinstance(error.__cause__, GeneratorExit))


def _orphaned_log(record) -> bool:
  return not str(record.msg).startswith(
      ("Future exception was never retrieved",
       "Task exception was never retrieved"))


class _OrphanedReads:
  """When one read of a damaged checkpoint fails, orbax's other reads still
  in flight fail too, as noise, during the restore and later: unraisable
  exceptions (_is_orphaned_read) and asyncio's 'Future (or Task) exception
  was never retrieved' (the same error again). `quiet()` drops both during a
  restore and, once a restore has failed, for the rest of the process (its
  orphaned reads go on failing); anything else is reported as before."""

  def __init__(self):
    self._previous_hook = None  # sys.unraisablehook before ours.
    self._for_good = False  # A restore has failed: the filters stay.

  def _hook(self, unraisable) -> None:
    if not _is_orphaned_read(unraisable):
      self._previous_hook(unraisable)

  @contextlib.contextmanager
  def quiet(self):
    if self._for_good:
      yield
      return
    asyncio_log = std_logging.getLogger("asyncio")
    self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._hook
    asyncio_log.addFilter(_orphaned_log)
    try:
      yield
    except Exception:
      self._for_good = True
      raise
    finally:
      if not self._for_good:
        asyncio_log.removeFilter(_orphaned_log)
        if sys.unraisablehook == self._hook:  # Unless replaced meanwhile.
          sys.unraisablehook = self._previous_hook


ORPHANED_READS = _OrphanedReads()


def saved_checksums(restored: ocp.args.Composite, part: str) -> dict:
  """The saved checksums' `part` ('arrays' or 'json'); {} without them."""
  if CHECKSUMS not in restored:
    return {}
  saved = restored[CHECKSUMS]
  if not (isinstance(saved, dict) and isinstance(saved.get(part), dict)):
    raise CorruptCheckpoint(f"its checksums have no {part!r} entry")
  return saved[part]


def verify(mngr, step: int, restored: ocp.args.Composite,
            arrays: dict) -> None:
  """Raises CorruptCheckpoint when `arrays` (restored items) differ from
  their saved checksums, a UserError when they are not finite."""
  checksums, nonfinite = fingerprint(arrays)
  saved = saved_checksums(restored, "arrays")
  for name, sums in checksums.items():
    differ = [name + path for path, checksum in sums.items()
              if name in saved and saved[name].get(path) != checksum]
    if differ:
      raise CorruptCheckpoint(f"{listed(differ)} differ from their checksums")
  if nonfinite:
    raise errors.UserError(
        f"the checkpoint at step {step} in {mngr.directory} holds NaN or "
        f"infinite values ({listed(nonfinite)}): the run had diverged when "
        "it was saved; use an earlier step")


def newest_intact(mngr: ocp.CheckpointManager, restore: Callable[[int], _T],
                  steps: list[int]) -> tuple[int, _T, list[int]]:
  """(step, restore(step)) for the first of `steps` that restores intact,
  and the steps before it that did not (each logged with why).

  A CorruptCheckpoint (one that cannot be read or fails its checksums) is
  passed over; anything else, a UserError (a tokenizer mismatch, non-finite
  values) included, stops the search.
  """
  failures = []
  for step in steps:
    try:
      value = restore(step)
    except CorruptCheckpoint as e:
      reason = " ".join(str(e).split())[:300]
      logging.warning("The checkpoint at step %d in %s cannot be used: %s",
                      step, mngr.directory, reason)
      failures.append((step, reason))
      continue
    if failures:
      logging.warning("Using the checkpoint at step %d, the newest intact one.",
                      step)
    return step, value, [s for s, _ in failures]
  raise errors.UserError(
      f"no checkpoint in {mngr.directory} can be restored: "
      + "; ".join(f"step {s}: {r}" for s, r in failures))


def move_aside(mngr, steps: list[int]) -> None:
  """Moves the checkpoints of `steps` (failed ones) out of orbax's way, to
  <workdir>/unreadable_checkpoints/ (process 0 moves them; nothing is
  deleted), so that training can save those steps again."""
  aside = mngr.directory.parent / UNREADABLE
  if jax.process_index() == 0:
    aside.mkdir(parents=True, exist_ok=True)
    for bad in steps:
      dest = aside / str(bad)
      if dest.exists():  # From an earlier fallback.
        dest = aside / f"{bad}.{time.time_ns()}"
      (mngr.directory / str(bad)).rename(dest)
      logging.warning("Moved the checkpoint at step %d to %s.", bad, dest)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("unreadable checkpoints moved")
  mngr.reload()
