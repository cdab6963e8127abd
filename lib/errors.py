"""Errors that the launcher reports on one line, without a stack trace."""


class UserError(Exception):
  """Something the user can fix: a bad config value, missing data, an unwritable workdir.

  The message names what is wrong and what is allowed; `python -m experiments`
  prints it as one line and exits with status 1.
  """


class NonFiniteLossError(UserError):
  """The training loss became NaN or inf; the run stopped and kept its last good checkpoint."""


class Interrupted(UserError):
  """The run got SIGINT or SIGTERM, saved a checkpoint and stopped; rerunning resumes."""
