"""The error for bad user input: a flag, config field, file or argument."""


class UserError(ValueError):
  """Says which input was wrong and what was expected; entry points print it
  as one line and exit with status 1, without a traceback."""
