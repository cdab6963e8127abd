"""Files the codebase writes and reads back: damage is found, rebuilt where it can be, else one line."""
import glob
import json
import os
import shutil

import numpy as np
import pytest

from lib import checkpoints
from lib import records
from tests.conftest import run_cli


def _overwrite(path, offset, data=b'\x7f' * 4096):
  with open(path, 'r+b') as f:
    f.seek(offset)
    f.write(data)


def test_a_json_record_reads_back_as_written_and_any_damage_is_named(tmp_path):
  path = str(tmp_path / 'results.json')
  payload = {'test_accuracy': 0.9125, 'loss': float('nan'), 'seeds': {'seed': [0, 1]}, 'n': 3}
  records.write_json(path, {**payload, 'array': np.arange(3), 'scalar': np.float32(0.5)})
  back = records.read_json(path)
  assert np.isnan(back.pop('loss')) and back == {
      'test_accuracy': 0.9125, 'seeds': {'seed': [0, 1]}, 'n': 3, 'array': [0, 1, 2], 'scalar': 0.5
  }
  text = open(path).read()
  with open(path, 'w') as f:
    f.write(text[:len(text) // 2])
  with pytest.raises(records.DamagedRecord, match='results.json is damaged .not JSON'):
    records.read_json(path)
  with open(path, 'w') as f:  # Still JSON, one digit changed: only the checksum sees it.
    f.write(text.replace('0.9125', '0.9725'))
  with pytest.raises(records.DamagedRecord, match='does not match the checksum'):
    records.read_json(path)
  with open(path, 'w') as f:  # A record from before checksums reads as it parses.
    json.dump(payload, f)
  assert records.read_json(path)['test_accuracy'] == 0.9125


@pytest.mark.parametrize('damage,message', [
    (lambda p: open(p, 'r+b').truncate(os.path.getsize(p) - 1000), 'bytes, .* written'),
    (lambda p: _overwrite(p, 4096), 'bytes do not match the checksum'),
    (os.remove, 'missing'),
])
def test_saved_arrays_are_checked_for_size_and_checksum(tmp_path, damage, message):
  arrays = {
      'x': np.arange(60_000, dtype=np.uint8).reshape(-1, 6), 'y': np.arange(10, dtype=np.int32)
  }
  records.save_arrays(str(tmp_path), arrays)
  loaded = records.load_arrays(str(tmp_path))
  for k, v in arrays.items():
    np.testing.assert_array_equal(loaded[k], v)
    assert loaded[k].dtype == v.dtype
  damage(str(tmp_path / 'x.npy'))
  with pytest.raises(records.DamagedRecord, match=f'x.npy is damaged .*{message}'):
    records.load_arrays(str(tmp_path))


def test_a_checkpoint_whose_meta_was_changed_is_set_aside_for_the_previous_one(tmp_path):
  ckpt = checkpoints.Checkpoints(str(tmp_path), keep=3)
  for step in (1, 2):
    ckpt.save(step, {'w': np.full(10, step, np.float32)}, {'history': [{'epoch': step}]})
  ckpt.close()
  meta_files = [
      f for f in glob.glob(str(tmp_path / 'checkpoints' / '2' / 'meta' / '*'))
      if os.path.isfile(f) and '"epoch": 2' in open(f).read()
  ]
  assert len(meta_files) == 1, glob.glob(str(tmp_path / 'checkpoints' / '2' / '**'), recursive=True)
  text = open(meta_files[0]).read()
  with open(meta_files[0], 'w') as f:
    f.write(text.replace('"epoch": 2', '"epoch": 7'))
  ckpt = checkpoints.Checkpoints(str(tmp_path), keep=3)
  step, state, meta = ckpt.restore_latest({'w': np.zeros(10, np.float32)})
  ckpt.close()
  assert step == 1 and meta == {'history': [{'epoch': 1}]} and float(state['w'][0]) == 1
  assert os.path.isdir(tmp_path / 'checkpoints_unreadable' / '2')


def test_a_damaged_config_record_is_one_line_unless_results_json_still_holds_it(tmp_path):
  args = ['--config=configs/celsius.py:tiny', f'--workdir={tmp_path}']
  first = run_cli(*args)
  assert first.returncode == 0, first.stderr[-3000:]
  _overwrite(tmp_path / 'config.json', 10, b'\x00' * 20)
  rerun = run_cli(*args)  # results.json still names the config: warned, then resumed.
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert 'config.json is damaged' in rerun.stderr
  assert 'using the config recorded in results.json' in rerun.stderr
  records.read_json(str(tmp_path / 'config.json'))  # Written anew.
  _overwrite(tmp_path / 'config.json', 10, b'\x00' * 20)
  _overwrite(tmp_path / 'results.json', 10, b'\x00' * 20)
  out = run_cli(*args)
  assert out.returncode != 0 and 'Traceback' not in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and 'config.json is damaged' in last
  assert 'delete it to resume under this config, or pass another --workdir' in last


def test_a_damaged_array_cache_is_rebuilt_with_one_warning_and_the_same_numbers(
    mnist_data_dir, tmp_path):
  data_dir = str(tmp_path / 'tfds')
  shutil.copytree(mnist_data_dir, data_dir)
  [x_train] = glob.glob(os.path.join(data_dir, 'jaxnotes_arrays', 'mnist', 'train-*', 'x.npy'))
  args = ['--config=configs/mnist_cnn.py:tiny', f'--config.data_dir={data_dir}']

  def run(name):
    out = run_cli(*args, f'--workdir={tmp_path / name}')
    assert out.returncode == 0, out.stderr[-3000:]
    with open(tmp_path / name / 'results.json') as f:
      results = json.load(f)
    return {k: v for k, v in results.items() if k.startswith(('val_', 'test_'))}, out.stderr

  clean, stderr = run('clean')
  assert ' is damaged' not in stderr
  for damage in (lambda p: open(p, 'r+b').truncate(os.path.getsize(p) // 2),
                 lambda p: _overwrite(p, 10_000_000)):
    damage(x_train)
    results, stderr = run(f'after_{len(os.listdir(tmp_path))}')
    warnings = [line for line in stderr.splitlines() if ' is damaged' in line]
    assert len(warnings) == 1 and 'rebuilding it from TFDS' in warnings[0], warnings
    assert results == clean
    records.load_arrays(os.path.dirname(x_train))  # Whole again.
