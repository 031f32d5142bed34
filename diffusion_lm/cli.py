"""What every command line shares: the --config flag (checked whole before
anything runs), flag parsing, quiet library logs, and bad input as one line
`error: ...` with exit status 1."""

import logging as std_logging
import os
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
  """absl's flag parsing, with a bad --config.* override as one clear line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"error: {e}")
  except (AttributeError, KeyError) as e:  # ml_collections: no such field.
    message = e
    while isinstance(message, BaseException) and message.args:
      message = message.args[0]  # The KeyError inside the AttributeError.
    field, _, hint = str(message).partition("\n")
    sys.exit(f"error: unknown config field {field.strip(chr(39))!r} in the "
             f"--config overrides. {hint}".rstrip())


def quiet_library_logs() -> None:
  """INFO lines from diffusion_lm only; other libraries (orbax, TFDS, grain)
  keep their warnings and errors."""

  def keep(record) -> bool:
    if f"{os.sep}diffusion_lm{os.sep}" in record.pathname:
      return True
    # TFDS warns whenever a builder is given its config object, as ours are.
    return (record.levelno >= std_logging.WARNING and
            not record.getMessage().startswith("Using custom data configuration"))

  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().python_handler.addFilter(keep)


def _prepare_command(argv: list[str], data_dir: str) -> str:
  """The prepare command for this command line's --config flags."""
  config_args = [a for a in argv[1:] if a.startswith("--config")
                 and not a.startswith("--config.data.data_dir")]
  return shlex.join(["python", "-m", "diffusion_lm.data.prepare", *config_args,
                     f"--config.data.data_dir={data_dir}"])


def _error_line(e: errors.UserError) -> str:
  """The one line a command line prints for a UserError."""
  if isinstance(e, errors.NotPrepared):
    return (f"error: data.corpus={e.corpus!r} is not prepared in {e.data_dir}; "
            f"prepare it with: {_prepare_command(sys.argv, e.data_dir)}")
  return f"error: {e}"


def run(main: Callable[[], None], check_config: bool = True) -> None:
  """Runs `main()` as a command line: parses flags (no positional arguments),
  filters library logs, checks --config (validation.check, without the
  device rules) when the command has one and check_config, and turns a
  UserError into one line and exit 1."""

  def wrapped(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_library_logs()
    try:
      if check_config and "config" in flags.FLAGS:
        from diffusion_lm import validation  # pylint: disable=g-import-not-at-top
        validation.check(flags.FLAGS.config)
      main()
    except errors.UserError as e:
      sys.exit(_error_line(e))

  app.run(wrapped, flags_parser=_parse_flags)
