"""The errors for bad user input: a flag, config field, file or argument."""


class UserError(ValueError):
  """Says which input was wrong and what was expected; entry points print it
  as one line and exit with status 1, without a traceback."""


class NotPrepared(UserError):
  """A downloaded corpus that `python -m diffusion_lm.prepare` has not
  prepared yet. Command lines complete the message with the prepare command
  for their own --config flags."""

  def __init__(self, corpus: str, data_dir: str):
    self.corpus, self.data_dir = corpus, data_dir
    super().__init__(
        f"data.corpus={corpus!r} is not prepared in {data_dir}; prepare it "
        "once with python -m diffusion_lm.prepare and the same --config "
        "flags")
