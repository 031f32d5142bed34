"""What every command line shares: the --config flag, flag parsing, quiet
library logs, and bad input as one line `error: ...` with exit status 1.
Each command checks its config (validation.check) before it does anything.

A config file that is missing or whose get_config raises, and a write that
finds the disk full or passes the file size limit (`ulimit -f`: Python
ignores SIGXFSZ, so the write fails with EFBIG), are one such line too.
"""

import errno
import logging as std_logging
import os
import re
import shlex
import sys
from collections.abc import Callable

from absl import app, flags, logging
from ml_collections import config_flags

from diffusion_lm import errors


def define_config_flag():
  """--config=FILE[:variant], with --config.<group>.<field>=VALUE overrides;
  a misspelt field is an error (lock_config)."""
  return config_flags.DEFINE_config_file(
      "config", None, "Path to a config file (see configs/).", lock_config=True)


def _parse_flags(argv):
  """absl's flag parsing, with a bad --config file or override as one clear
  line."""
  try:
    argv = flags.FLAGS(argv)
  except flags.Error as e:
    line, _, trace = str(e).partition("\n")
    if "Traceback" not in trace:
      sys.exit(f"error: {e}")
    # A config's get_config raised: absl's line, then the traceback, whose
    # last line is the exception's.
    sys.exit(f"error: {line.partition(': ')[0]}: "
             f"{trace.strip().splitlines()[-1].partition(': ')[2]}")
  except (AttributeError, KeyError) as e:  # ml_collections: no such field.
    message = e
    while isinstance(message, BaseException) and message.args:
      message = message.args[0]  # The KeyError inside the AttributeError.
    field, _, hint = str(message).partition("\n")
    sys.exit(f"error: unknown config field {field.strip(chr(39))!r} in the "
             f"--config overrides. {hint}".rstrip())
  except OSError as e:  # An override set in a config file that did not load.
    _exit_config_not_loaded(e)
  if "config" in flags.FLAGS and flags.FLAGS.config is not None:
    try:  # ml_collections keeps a load error until the config's first use.
      flags.FLAGS.config.keys()
    except OSError as e:
      _exit_config_not_loaded(e)
  return argv


def _exit_config_not_loaded(e: OSError) -> None:
  """A --config file that could not be loaded (missing, unreadable) as one
  line: the OS error, the last line of the one ml_collections raised."""
  reason = str(e.__cause__ or e).strip().splitlines()[-1].strip()
  sys.exit(f"error: the --config file cannot be loaded: {reason}")


_NO_SPACE = {errno.ENOSPC: "the disk is full",
             errno.EFBIG: "the file size limit (ulimit -f) was reached"}
# tensorstore (orbax's arrays) names the file and the OS error's code.
_TENSORSTORE_OS_ERROR = re.compile(
    r'"([^"]+)": [^"\[]*\[os_error_code=.(\d+).\]')


def _no_space(e: BaseException | None) -> str | None:
  """What a write that found the disk full (ENOSPC) or passed the file size
  limit (EFBIG) says, when `e` or an error it came from is one: an OSError,
  tensorstore's error, or another library's message with the OS's words for
  it (array_record's, which names the file); else None."""
  while e is not None:
    if isinstance(e, OSError) and e.errno in _NO_SPACE:
      return f"{_NO_SPACE[e.errno]} while writing {e.filename or 'a file'}"
    message = str(e)
    match = _TENSORSTORE_OS_ERROR.search(message)
    if match and int(match[2]) in _NO_SPACE:
      return f"{_NO_SPACE[int(match[2])]} while writing {match[1]}"
    for code, reason in _NO_SPACE.items():
      if os.strerror(code) in message:
        return f"{reason}: {message.strip().splitlines()[0]}"
    e = e.__cause__ or e.__context__
  return None


def quiet_library_logs() -> None:
  """INFO lines from diffusion_lm only; other libraries (orbax, TFDS, grain)
  keep their warnings and errors, but not those of a write that found no
  space (the command ends with one line saying so), nor the late callbacks
  of its checkpoint's other writes."""

  def keep(record) -> bool:
    if record.exc_info and _no_space(record.exc_info[1]):
      return False
    if f"{os.sep}diffusion_lm{os.sep}" in record.pathname:
      return True
    # TFDS warns whenever a builder is given its config object, as ours are.
    return (record.levelno >= std_logging.WARNING and
            not record.getMessage().startswith("Using custom data configuration"))

  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().python_handler.addFilter(keep)
  sys.unraisablehook = _drop_late_tensorstore_callbacks


def _drop_late_tensorstore_callbacks(unraisable) -> None:
  """sys.unraisablehook without the tracebacks of tensorstore writes that
  finish after orbax closed the event loop waiting for them, as it does when
  another write of the same checkpoint failed (a full disk): that failure is
  what the command reports, once."""
  error = unraisable.exc_value
  if not (isinstance(error, RuntimeError) and
          str(error) == "Event loop is closed"):
    sys.__unraisablehook__(unraisable)


def _prepare_command(argv: list[str], data_dir: str) -> str:
  """The prepare command for this command line's --config flags."""
  config_args = [a for a in argv[1:] if a.startswith("--config")
                 and not a.startswith("--config.data.data_dir")]
  return shlex.join(["python", "-m", "diffusion_lm.prepare", *config_args,
                     f"--config.data.data_dir={data_dir}"])


def _error_line(e: errors.UserError) -> str:
  """The one line a command line prints for a UserError."""
  if isinstance(e, errors.NotPrepared):
    return (f"error: data.corpus={e.corpus!r} is not prepared in {e.data_dir}; "
            f"prepare it with: {_prepare_command(sys.argv, e.data_dir)}")
  return f"error: {e}"


def run(main: Callable[[], None]) -> None:
  """Runs `main()` as a command line: parses flags (no positional arguments),
  filters library logs, and turns a UserError, or a write that found no
  space, into one line and exit 1. `main` checks its own config."""

  def wrapped(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_library_logs()
    try:
      main()
    except errors.UserError as e:
      sys.exit(_error_line(e))
    except Exception as e:  # pylint: disable=broad-exception-caught
      reason = _no_space(e)
      if reason is None:
        raise
      sys.exit(f"error: {reason}: make room (or raise the limit) and run the "
               "command again")

  app.run(wrapped, flags_parser=_parse_flags)
