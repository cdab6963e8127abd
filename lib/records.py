"""Files the codebase writes and later reads back, verified when read.

A JSON record (config.json, results.json, a sweep's summary.json, an array
cache's manifest) is written beside its path and renamed into place, so a crash
never leaves half a file, and carries the SHA-256 of its content under
CHECKSUM_KEY. `read_json` recomputes it: a truncated file, bytes overwritten in
place or a hand edit raise `DamagedRecord`, which names the file, and the caller
decides what the damage costs (rebuild a cache, rerun a sweep's point, or one
error line that says what to do). Arrays are saved with their checksum, size,
shape and dtype in a manifest and checked the same way when loaded.

A record written before records carried checksums (no CHECKSUM_KEY) is read
as it parses; the next write adds one.
"""
import hashlib
import io
import json
import os
from typing import Any

import numpy as np

CHECKSUM_KEY = 'sha256'
MANIFEST = 'manifest.json'


class DamagedRecord(Exception):
  """A file the codebase wrote reads back other than it was written: `path` and `why`."""
  def __init__(self, path: str, why: str):
    super().__init__(f'{path} is damaged ({why})')
    self.path, self.why = path, why


def to_json(value: Any) -> Any:
  """A copy of `value` with numpy and JAX scalars and arrays as Python numbers and lists."""
  if value is None or isinstance(value, (str, bool, int, float)):
    return value
  if isinstance(value, dict):
    return {str(k): to_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_json(v) for v in value]
  if hasattr(value, '__array__'):
    array = np.asarray(value)
    return array.item() if array.ndim == 0 else to_json(array.tolist())
  return value


def checksum(payload: dict[str, Any]) -> str:
  """The SHA-256 of a JSON-ready dict, whatever its indentation and key order."""
  # Canonical, whatever the indentation: Python's json writes floats so they read back exact.
  text = json.dumps(payload, sort_keys=True, separators=(',', ':'), allow_nan=True)
  return hashlib.sha256(text.encode()).hexdigest()


def stamp(payload: dict[str, Any]) -> dict[str, Any]:
  """A JSON-ready copy of `payload` that carries its checksum under CHECKSUM_KEY."""
  payload = to_json(payload)
  payload.pop(CHECKSUM_KEY, None)
  return {**payload, CHECKSUM_KEY: checksum(payload)}


def verify(record: dict[str, Any], path: str) -> dict[str, Any]:
  """`record` without its checksum, once the checksum matches (a record without one passes).

  Raises:
    DamagedRecord: the content differs from what was stamped; `path` names where it was read.
  """
  record = dict(record)
  written = record.pop(CHECKSUM_KEY, None)
  if written is not None and written != checksum(record):
    raise DamagedRecord(path, 'its content does not match the checksum written with it')
  return record


def write_json(path: str, payload: dict[str, Any]) -> None:
  """Writes `payload` (a dict), stamped, beside `path`, then renames it into place."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(stamp(payload), f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(tmp, path)


def read_json(path: str) -> dict[str, Any]:
  """The dict that `write_json` wrote to `path`, verified, without its checksum.

  Raises:
    FileNotFoundError: no file at `path`.
    DamagedRecord: it does not parse, is not a dict, or its checksum differs.
  """
  with open(path, 'rb') as f:
    raw = f.read()
  try:
    record = json.loads(raw)
  except ValueError as e:  # Truncated or overwritten: JSONDecodeError or UnicodeDecodeError.
    raise DamagedRecord(path, f'not JSON: {e}') from None
  if not isinstance(record, dict):
    raise DamagedRecord(path, f'a JSON {type(record).__name__}, not an object')
  return verify(record, path)


def save_arrays(directory: str, arrays: dict[str, np.ndarray]) -> None:
  """Saves each array as NAME.npy in `directory` and, last, the manifest that vouches for them."""
  entries = {}
  for name, array in arrays.items():
    buffer = io.BytesIO()  # Serialized once: the bytes written are the bytes hashed.
    np.save(buffer, array)
    data = buffer.getvalue()
    with open(os.path.join(directory, f'{name}.npy'), 'wb') as f:
      f.write(data)
    entries[name] = {
        'bytes': len(data), CHECKSUM_KEY: hashlib.sha256(data).hexdigest(),
        'shape': list(array.shape), 'dtype': str(array.dtype)
    }
  write_json(os.path.join(directory, MANIFEST), {'arrays': entries})


def load_arrays(directory: str) -> dict[str, np.ndarray]:
  """The arrays that `save_arrays` saved in `directory`, each checked against the manifest.

  Raises:
    FileNotFoundError: no manifest (nothing saved, or saving never finished).
    DamagedRecord: the manifest or an array differs from what was saved.
  """
  entries = read_json(os.path.join(directory, MANIFEST))['arrays']
  arrays = {}
  for name, entry in entries.items():
    path = os.path.join(directory, f'{name}.npy')
    try:
      size = os.path.getsize(path)
    except OSError:
      raise DamagedRecord(path, 'missing') from None
    if size != entry['bytes']:
      raise DamagedRecord(path, f'{size} bytes, {entry["bytes"]} written')
    with open(path, 'rb') as f:
      data = f.read()
    if hashlib.sha256(data).hexdigest() != entry[CHECKSUM_KEY]:
      raise DamagedRecord(path, 'its bytes do not match the checksum written with them')
    array = np.load(io.BytesIO(data))
    if list(array.shape) != entry['shape'] or str(array.dtype) != entry['dtype']:
      raise DamagedRecord(
          path, f'{array.dtype}{list(array.shape)}, '
          f'{entry["dtype"]}{entry["shape"]} written')
    arrays[name] = array
  return arrays
