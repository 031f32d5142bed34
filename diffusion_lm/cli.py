"""What every command line shares: absl flag parsing with one-line errors."""

import sys

from absl import app, flags


def parse_flags(argv):
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


def no_positional_args(argv) -> None:
  """Refuses stray arguments (absl passes them through after the flags)."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")


def start(argv) -> None:
  """What a command does first: no stray arguments, quiet library logs."""
  no_positional_args(argv)
  from diffusion_lm import parallel  # pylint: disable=g-import-not-at-top
  parallel.quiet_library_logs()  # Imported here: it loads JAX.
