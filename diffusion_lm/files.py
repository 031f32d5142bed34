"""Paths and files: local paths or URLs (gs://, read and written through
etils.epath), directories checked before anything is written, and files
written whole or not at all."""

import contextlib
import os
import uuid

from etils import epath

from diffusion_lm import errors


def is_url(path) -> bool:
  """Whether `path` is a URL (gs://...), not a path of the local file system."""
  return "://" in os.fspath(path)


def absolute(workdir: str) -> str:
  """A local workdir as an absolute path; a URL as it is."""
  return workdir if is_url(workdir) else os.path.abspath(workdir)


def check_writable_dir(path: str, name: str) -> None:
  """Refuses a local directory that cannot be created or written to: a file,
  one under a file, or one without write permission. `name` is the flag or
  config field that gave `path`. A URL is not checked."""
  if is_url(path):
    return
  path = os.path.abspath(path)
  existing = path  # The directory itself or its nearest existing parent.
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise errors.UserError(
        f"{name}={path} is not a directory" if existing == path else
        f"{name}={path} lies under {existing}, which is not a directory")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise errors.UserError(
        f"{name}={path} is not writable" if existing == path else
        f"{name}={path} cannot be created: {existing} is not writable")


def write_atomically(path: str, data: str | bytes) -> None:
  """Writes `data` (text as UTF-8) to `path` through a temporary file beside
  it: the file is complete or unchanged, and no temporary file stays behind.
  A URL (gs://) is written directly: an object store replaces an object
  whole."""
  if isinstance(data, str):
    data = data.encode("utf-8")
  if is_url(path):
    epath.Path(path).write_bytes(data)
    return
  tmp = f"{path}.{uuid.uuid4().hex}.tmp"
  try:
    with open(tmp, "xb") as f:
      f.write(data)
    os.replace(tmp, path)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
