"""A run's working directory: checked before any work, and results.json at the end."""
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from lib.errors import UserError


def prepare(workdir: str) -> str:
  """Creates `workdir` (and `workdir/plots`) and checks that it can be written.

  Args:
    workdir: the run's directory.

  Returns:
    The absolute path of the directory.

  Raises:
    UserError: the directory cannot be created or written.
  """
  path = os.path.abspath(workdir)
  probe = os.path.join(path, '.write_test')
  try:
    os.makedirs(os.path.join(path, 'plots'), exist_ok=True)
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise UserError(
        f'--workdir={workdir} cannot be written ({e.strerror}); '
        'pass a directory you can write to') from None
  return path


def _to_json(value: Any) -> Any:
  if isinstance(value, dict):
    return {str(k): _to_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_json(v) for v in value]
  if isinstance(value, (np.ndarray, jax.Array)):
    return _to_json(np.asarray(value).tolist())
  if isinstance(value, (np.floating, np.integer, np.bool_)):
    return value.item()
  return value


def write_results(workdir: str, results: dict[str, Any],
                  config: ml_collections.ConfigDict, start_time: float) -> str:
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
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(_to_json(payload), f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(tmp, path)
  return path
