"""Errors that the launcher reports on one line, without a stack trace."""
import errno


class UserError(Exception):
  """Something the user can fix: a bad config value, missing data, an unwritable workdir.

  The message names what is wrong and what is allowed; `python -m experiments`
  prints it as one line and exits with status 1.
  """


class NonFiniteLossError(UserError):
  """The training loss became NaN or inf; the run stopped and kept its last good checkpoint."""


class PopulationTooLarge(UserError):
  """A population's programs need more memory than its device has free; `fits` members would fit."""
  def __init__(self, message: str, fits: int):
    super().__init__(message)
    self.fits = fits


class Interrupted(UserError):
  """The run got SIGINT or SIGTERM, saved a checkpoint and stopped; rerunning resumes."""


class DiskFull(UserError):
  """The workdir's disk (or quota) is full; the last complete checkpoint is kept."""


def is_disk_full(error: BaseException | None) -> bool:
  """Whether `error`, or an error it was raised from, says the disk or the quota is full.

  Libraries wrap the OSError (orbax in a ValueError, TensorFlow in its own
  errors), so the chain and the message are both read.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if any(s in str(error) for s in ('No space left on device', 'Disk quota exceeded')):
      return True
    error = error.__cause__ or error.__context__
  return False
