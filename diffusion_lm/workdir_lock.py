"""One training run per workdir: <workdir>/lock names the process that holds it.

The lock file holds JSON {"host", "pid", "started"} and is flock()ed while
its holder runs. A second run is refused at once, naming the holder. A lock
left by a process that died (killed, say) is taken over with a warning: the
kernel released its flock, and on the same host its pid is gone. A lock left
by another host is not taken over (its process cannot be asked): the message
says to delete the file if that run is gone. Local and network file systems
with POSIX locks; in a multi-process job only process 0 holds it.
"""

import datetime
import fcntl
import json
import os
import socket

from absl import logging

from diffusion_lm import errors

LOCK_FILE = "lock"


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's process.
    return True
  return True


def _describe(holder: dict) -> str:
  return (f"process {holder.get('pid')} on host {holder.get('host')!r} "
          f"(started {holder.get('started')})")


class WorkdirLock:
  """Context manager: holds <workdir>/lock, creating the workdir if needed.

  On exit it deletes the lock file, and the workdir when it created it and
  nothing else was written there (a run refused before its first write).
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self.enabled = enabled
    self._fd = None
    self._created = False

  def _refuse(self, holder: dict, advice: str):
    raise errors.UserError(
        f"--workdir={self.workdir} is in use by {_describe(holder)}: one run "
        f"per workdir ({self.path}); {advice}")

  def _open_locked(self) -> int:
    """A descriptor of the lock file with our flock on it, or a refusal."""
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = self._read(fd)
        os.close(fd)
        self._refuse(holder, "wait for it to finish or stop it")
      try:  # The holder may have deleted the file between open and flock.
        if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
          return fd
      except FileNotFoundError:
        pass
      os.close(fd)

  @staticmethod
  def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 1 << 16).decode("utf-8", errors="replace")
    try:
      holder = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
      holder = {"pid": "?", "host": "?", "started": text[:80]}
    return holder if isinstance(holder, dict) else {}

  def __enter__(self):
    if not self.enabled:
      return self
    self._created = not os.path.isdir(self.workdir)
    os.makedirs(self.workdir, exist_ok=True)
    fd = self._open_locked()
    holder, host = self._read(fd), socket.gethostname()
    if holder:
      pid = holder.get("pid")
      if holder.get("host") != host:
        os.close(fd)
        self._refuse(holder, "if that run has ended, delete the lock file")
      if isinstance(pid, int) and pid != os.getpid() and _alive(pid):
        os.close(fd)  # No flock but alive: a file system without locks.
        self._refuse(holder, "wait for it to finish or stop it")
      logging.warning("Taking over the lock of %s, which is no longer running.",
                      _describe(holder))
    record = {"host": host, "pid": os.getpid(),
              "started": datetime.datetime.now().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def __exit__(self, *exc):
    if self._fd is None:
      return
    os.remove(self.path)  # While still holding the flock.
    os.close(self._fd)
    self._fd = None
    if self._created and not os.listdir(self.workdir):
      os.rmdir(self.workdir)
