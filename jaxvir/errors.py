"""The errors a user can fix: each message is one sentence naming the cause and the fix.

Commands (`scripts/*.py`) print these as one line, without a traceback (set `JAXVIR_DEBUG=1`
to see it); every other exception is a bug in jaxvir and keeps its traceback.

Example:

  >>> raise ConfigError("config.optim.name: unknown optimizer 'adm'; one of ('adam', 'sgd')")
"""


class UserError(Exception):
  """A problem with the config, the data, the weights or the workdir, not with jaxvir."""


class ConfigError(UserError, ValueError):
  """A config field, or a combination of fields, that cannot work."""


class DataError(UserError, ValueError):
  """Data that is missing, unreadable or cannot be split as configured."""


class WorkdirError(UserError):
  """A workdir whose checkpoints or config do not fit the run asked for."""


class NonFiniteLossError(UserError, FloatingPointError):
  """The training loss became NaN or infinite; the last good checkpoint is kept."""
