"""One training run per workdir: <workdir>/lock names the process that holds it.

The lock file holds JSON {"host", "pid", "started", "process_start"} and is
flock()ed while its holder runs. A second run is refused at once, naming the
holder. A lock left by a process that died (killed, say) is taken over with
a warning: the kernel released its flock, and on the same host its pid is
gone or names another process now (`process_start`, the boot id and the
process's start time from Linux's /proc, tells a reused pid from the holder;
without /proc a live pid counts as the holder). A lock file without a
readable record (its writer killed mid-write) is taken over with a warning
too. A lock left by another host is not taken over (its process cannot be
asked): the message says to delete the file if that run is gone. Local and
network file systems with POSIX locks; in a multi-process job only process 0
holds it.

A workdir given as a URL (`gs://bucket/run`) is read and written through
etils.epath. An object store offers no flock, so there the lock is
advisory: the holder's record is read, then ours written, and two runs
started within that moment would both proceed (a warning says so). A lock
left there by a run on this host that is gone is taken over; one from
another host is not.

The lock checks its workdir with files.check_writable_dir before anything
is written.
"""

import datetime
import fcntl
import json
import os
import socket

from absl import logging
from etils import epath

from diffusion_lm import errors, files

LOCK_FILE = "lock"


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's process.
    return True
  return True


def _process_start(pid: int) -> str | None:
  """'<boot id> <start time>' of a running process (Linux's /proc: the
  start in clock ticks after boot, field 22 of /proc/<pid>/stat), which a
  later process given the same pid does not share; None without /proc."""
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      boot_id = f.read().strip()
    with open(f"/proc/{pid}/stat") as f:
      stat = f.read()
  except OSError:
    return None
  # Fields 3 on follow the command name, which may hold spaces and ')'.
  return f"{boot_id} {stat.rpartition(')')[2].split()[19]}"


def _describe(holder: dict) -> str:
  if "torn" in holder:
    return f"a process whose record is unreadable ({holder['torn']!r})"
  return (f"process {holder.get('pid')} on host {holder.get('host')!r} "
          f"(started {holder.get('started')})")


class WorkdirLock:
  """Context manager: holds <workdir>/lock, creating the workdir if needed.

  On exit it deletes the lock file. A run that failed (exited with an
  exception) also loses the empty directories it made there (the checkpoint
  manager makes its own before the data is read), and the workdir when it
  made it and nothing else was written there: a run refused before its
  first write leaves the workdir as it found it.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.workdir = files.absolute(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self.enabled = enabled
    self._fd = None
    self._created = False
    self._entries = set()  # What the workdir held before the run.
    self._record = None  # What a URL workdir's lock holds while we hold it.

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
  def _parse(text: str) -> dict:
    """The holder's record; {} for none, {"torn": the text} for one that is
    not a JSON object (its writer killed mid-write, say)."""
    try:
      holder = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
      holder = None
    return holder if isinstance(holder, dict) else {"torn": text[:80]}

  @classmethod
  def _read(cls, fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    return cls._parse(os.read(fd, 1 << 16).decode("utf-8", errors="replace"))

  def _take_over(self, holder: dict) -> None:
    """Refuses a lock whose holder may still run; warns when taking over
    one left by a process that is gone, or an unreadable one (no holder:
    nothing to do)."""
    if not holder:
      return
    if "torn" in holder:
      logging.warning(
          "The lock file %s holds no readable record (%r), as when its writer "
          "was killed while writing it; taking it over.", self.path,
          holder["torn"])
      return
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname():
      self._refuse(holder, "if that run has ended, delete the lock file")
    if isinstance(pid, int) and pid != os.getpid() and _alive(pid):
      recorded, now = holder.get("process_start"), _process_start(pid)
      if recorded is None or now is None or recorded == now:
        # No flock but alive: a file system without locks, or a URL workdir.
        self._refuse(holder, "wait for it to finish or stop it")
      logging.warning("Taking over the lock of %s: pid %d belongs to another "
                      "process now.", _describe(holder), pid)
      return
    logging.warning("Taking over the lock of %s, which is no longer running.",
                    _describe(holder))

  @staticmethod
  def _new_record() -> str:
    return json.dumps({
        "host": socket.gethostname(), "pid": os.getpid(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "process_start": _process_start(os.getpid())})

  def _enter_url(self):
    """The advisory lock of a URL workdir (module docstring)."""
    path = epath.Path(self.path)
    self._take_over(self._parse(path.read_text()) if path.exists() else {})
    logging.warning(
        "--workdir=%s is a URL: its lock %s cannot be taken atomically, so a "
        "second run started at the same moment would not be refused; start "
        "one run per workdir.", self.workdir, self.path)
    self._record = self._new_record()
    path.write_text(self._record)
    return self

  def __enter__(self):
    if not self.enabled:
      return self
    if files.is_url(self.workdir):
      return self._enter_url()
    files.check_writable_dir(self.workdir, "--workdir")
    self._created = not os.path.isdir(self.workdir)
    os.makedirs(self.workdir, exist_ok=True)
    self._entries = set(os.listdir(self.workdir))
    fd = self._open_locked()
    try:
      self._take_over(self._read(fd))
    except errors.UserError:
      os.close(fd)
      raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, self._new_record().encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def __exit__(self, exc_type, *exc):
    if self._record is not None:  # A URL workdir: deleted unless taken over.
      path = epath.Path(self.path)
      if path.exists() and path.read_text() == self._record:
        path.unlink()
      self._record = None
      return
    if self._fd is None:
      return
    os.remove(self.path)  # While still holding the flock.
    os.close(self._fd)
    self._fd = None
    if exc_type is not None:
      for entry in os.scandir(self.workdir):
        if (entry.name not in self._entries and
            entry.is_dir(follow_symlinks=False) and not os.listdir(entry.path)):
          os.rmdir(entry.path)
    if self._created and not os.listdir(self.workdir):
      os.rmdir(self.workdir)
