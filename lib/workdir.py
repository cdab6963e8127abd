"""A run's working directory: one run at a time, the config it was started with, results.json.

The launcher (python -m experiments) takes the workdir's lock, checks a rerun's
config against the one recorded at the first start, and writes results.json at
the end; experiments only train and evaluate.
"""
import contextlib
import datetime
import fcntl
import os
import socket
import time
from typing import Any, Iterator

from absl import logging
import jax
import ml_collections

from lib import records
from lib.errors import UserError

# Fields that only extend or observe a run: a rerun may change them and still resume.
# Every other field changes the train state's structure, the data or a step's maths.
RESUMABLE_FIELDS = frozenset({
    'num_epochs',
    'log_every_steps',
    'log_every_seconds',
    'eval_every_epochs',
    'checkpoint_every_epochs',
    'keep_checkpoints',
    'early_stopping_patience',
    'restore_best',
    'eval_batch_size',
    'data_dir',
    'manual_dir',
    'download',
    'profile_steps',
})
# Where a schedule depends on the run's length, a longer run stretches it.
_LENGTH_DEPENDENT = ('cosine', 'warmup_cosine')
CONFIG_FILE = 'config.json'


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[str]:
  """Creates `workdir` (and `workdir/plots`) and holds its lock; another run on it fails at once.

  Each process of a run locks its own file, `lock.PROCESS_INDEX`: the
  processes of one multi-host run share the workdir, and any second run
  collides on process 0's file. `flock` locks belong to the open file, so the
  kernel releases them when the process dies, even by `kill -9`: no stale locks.

  Args:
    workdir: the run's directory.

  Yields:
    The absolute path of the directory.

  Raises:
    UserError: the directory cannot be written, or another process holds its
      lock (named by host, pid and start).
  """
  path = os.path.abspath(workdir)
  try:
    os.makedirs(path, exist_ok=True)
    fd = os.open(os.path.join(path, f'lock.{jax.process_index()}'), os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise UserError(f'--workdir={workdir} cannot be written ({e.strerror}); '
                    'pass a directory you can write to') from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = ''
      for _ in range(20):  # The holder writes its name just after it locks.
        holder = os.pread(fd, 1000, 0).decode(errors='replace').strip()
        if holder:
          break
        time.sleep(0.05)
      raise UserError(f'--workdir={workdir} is in use by another run ({holder or "unknown"}); '
                      'wait for it to end, stop it, or pass another --workdir') from None
    since = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'host {socket.gethostname()}, pid {os.getpid()}, since {since}'.encode(), 0)
    os.makedirs(os.path.join(path, 'plots'), exist_ok=True)
    yield path
  finally:
    os.close(fd)  # Releases the lock.


def _flat(config: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in config.items():
    if isinstance(v, dict) and v:
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[prefix + k] = v
  return out


def _has_resume_point(workdir: str) -> bool:
  ckpt = os.path.join(workdir, 'checkpoints')
  steps = os.listdir(ckpt) if os.path.isdir(ckpt) else []
  return any(s.isdigit() for s in steps) or os.path.exists(os.path.join(workdir, 'results.json'))


def _recorded_config(workdir: str) -> dict[str, Any] | None:
  """The config the workdir's run started with: config.json's, else results.json's."""
  damaged = None
  for name, key in ((CONFIG_FILE, None), ('results.json', 'config')):
    try:
      record = records.read_json(os.path.join(workdir, name))
    except FileNotFoundError:
      continue
    except records.DamagedRecord as e:
      damaged = damaged or e
      continue
    if damaged:
      logging.warning('%s; using the config recorded in %s', damaged, name)
    return record[key] if key else record
  if damaged:
    raise UserError(
        f'{damaged}, and no other record says which config this run started with: restore '
        f'the file, delete it to resume under this config, or pass another --workdir')
  return None


def check_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Compares `config` with the one the workdir's run started with; then records it.

  A workdir with something to lose (a checkpoint or results.json) resumes
  only under a config that differs in RESUMABLE_FIELDS at most; those
  changes are logged. One with nothing to lose takes the new config.

  Args:
    workdir: the run's directory, locked.
    config: this run's config.

  Raises:
    UserError: a field outside RESUMABLE_FIELDS changed; one line per field, old → new.
  """
  new = _flat(records.to_json(config.to_dict()))
  old = _recorded_config(workdir) if _has_resume_point(workdir) else None
  if old is not None:
    old = _flat(old)
    changed = sorted(k for k in new.keys() & old.keys() if new[k] != old[k])
    refused = [k for k in changed if k.split('.')[0] not in RESUMABLE_FIELDS]
    if refused:
      lines = '\n'.join(f'  config.{k}: {old[k]!r} → {new[k]!r}' for k in refused)
      raise UserError(
          f'--workdir={workdir} holds a run of another config '
          f'({", ".join(f"config.{k}" for k in refused)} differ):\n{lines}\n'
          'Pass a new --workdir for the new config, or the old values to resume the run '
          f'(its config is in {os.path.join(workdir, CONFIG_FILE)}). Nothing was changed.')
    for k in changed:
      logging.info('resuming with config.%s changed: %r → %r', k, old[k], new[k])
    if 'num_epochs' in changed and new.get('lr_schedule') in _LENGTH_DEPENDENT:
      logging.warning(
          'config.num_epochs changed under lr_schedule=%r: the schedule now spans '
          'the new length, so the resumed steps follow another curve than the '
          'saved ones did', new['lr_schedule'])
    added = sorted(new.keys() - old.keys())
    if added:
      logging.warning('fields added to the configs since this run started, taken as given: %s',
                      ', '.join(f'{k}={new[k]!r}' for k in added))
  if jax.process_index() == 0:
    records.write_json(os.path.join(workdir, CONFIG_FILE), config.to_dict())


def write_results(workdir: str, results: dict[str, Any], config: ml_collections.ConfigDict,
                  start_time: float) -> str:
  """Writes results.json: the final metrics, wall time and the config.

  Only process 0 writes; the file is replaced atomically so a crash never
  leaves half a file.

  Args:
    workdir: the run's directory.
    results: final metrics and anything else the experiment reports.
    config: the run's config, stored beside the numbers it produced.
    start_time: `time.time()` at the start of the run.

  Returns:
    The path of results.json.
  """
  path = os.path.join(workdir, 'results.json')
  if jax.process_index() != 0:
    return path
  payload = dict(results)
  payload['wall_seconds'] = round(time.time() - start_time, 2)
  payload['devices'] = f'{jax.device_count()} x {jax.devices()[0].device_kind}'
  payload['config'] = config.to_dict()
  records.write_json(path, payload)
  return path
