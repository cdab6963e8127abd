"""Runs that cannot be lost or mixed up: one run per workdir, checked resumes, one-line errors."""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from lib import checkpoints
from tests.conftest import REPO, read_results, run_cli, tree_digest


def _error_line(out: subprocess.CompletedProcess) -> str:
  """The run's one `error:` line; fails on a traceback or on more than one."""
  assert out.returncode != 0, out.stderr[-2000:]
  assert 'Traceback' not in out.stderr, out.stderr[-3000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1, out.stderr[-3000:]
  return errors[0]


def test_offline_build_never_touches_the_network(mnist_run):
  """The session's MNIST was built from manual_dir with every socket blocked: not one attempt."""
  assert mnist_run['out'].returncode == 0, mnist_run['out'].stderr[-3000:]
  assert not os.path.exists(mnist_run['network_attempts']), open(
      mnist_run['network_attempts']).read()
  assert read_results(mnist_run['workdir'])['steps'] == 6


def test_a_second_run_on_a_workdir_in_use_stops_at_once_and_kill_9_leaves_no_lock(tmp_path):
  command = [
      sys.executable, '-m', 'experiments', '--config=configs/celsius.py', f'--workdir={tmp_path}',
      '--config.num_epochs=10000000'
  ]
  first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    lock = tmp_path / 'lock.0'
    deadline = time.time() + 120
    while not (lock.exists() and lock.read_text()) and time.time() < deadline:
      time.sleep(0.1)
    assert lock.read_text(), 'the first run never took the lock'
    second = run_cli(*command[3:])
    line = _error_line(second)
    assert 'is in use by another run' in line and f'pid {first.pid}, since ' in line, line
    assert first.poll() is None  # The first run goes on.
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  # The kernel released the lock with the process: the next run resumes and ends.
  third = run_cli('--config=configs/celsius.py', f'--workdir={tmp_path}', '--config.num_epochs=200')
  assert third.returncode == 0, third.stderr[-3000:]


def test_changed_model_on_rerun_refuses_and_keeps_every_checkpoint(mnist_run, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(mnist_run['workdir'], workdir)
  data = f'--config.data_dir={mnist_run["data_dir"]}'
  before = tree_digest(os.path.join(workdir, 'checkpoints'))
  refused = run_cli('--config=configs/mnist_cnn.py:tiny', f'--workdir={workdir}', data,
                    '--config.model_kwargs.dense=128', '--config.num_epochs=4')
  _error_line(refused)
  assert '  config.model_kwargs.dense: 256 → 128' in refused.stderr.splitlines(), refused.stderr
  assert 'num_epochs' not in refused.stderr  # An accepted change is not a reason.
  assert tree_digest(os.path.join(workdir, 'checkpoints')) == before
  assert not os.path.exists(os.path.join(workdir, 'checkpoints_unreadable'))
  ckpt = checkpoints.Checkpoints(workdir, keep=2)
  for step in ckpt.all_steps():  # Every checkpoint still reads.
    state, meta = ckpt.restore(step)
    assert int(state['step']) == step and meta['history']
  ckpt.close()

  # A field that only extends the run is accepted: it resumes and trains 2 more epochs.
  longer = run_cli('--config=configs/mnist_cnn.py:tiny', f'--workdir={workdir}', data,
                   '--config.num_epochs=4')
  assert longer.returncode == 0, longer.stderr[-3000:]
  assert 'config.num_epochs changed: 2 → 4' in longer.stderr
  assert 'resumed from' in longer.stderr and 'at step 6' in longer.stderr
  results = read_results(workdir)
  assert results['steps'] == 12 and len(results['history']) == 4


# (arguments, what the error line must name, 'resumable' workdir or a 'fresh' one).
# On the resumable workdir (a finished run with checkpoints) a changed field is refused
# by the resume check; checks that need the data run on a fresh one.
_TINY = '--config=configs/mnist_cnn.py:tiny'
_BAD_INPUTS = [
    ([_TINY,
      '--config.lerning_rate=0.1'], "'lerning_rate'; did you mean learning_rate", 'resumable'),
    ([_TINY, '--config.model_kwargs.dens=3'], 'model_kwargs.dense', 'resumable'),
    ([_TINY,
      '--config.num_epochs=many'], 'config.num_epochs expects a value of type int', 'resumable'),
    ([_TINY, '--config.learning_rate=fast'], 'config.learning_rate expects a value of type float',
     'resumable'),
    ([_TINY, '--config.download=maybe'], '--config.download=maybe', 'resumable'),
    (['--config=configs/mnist_cnn.py:huge'], "unknown config variant 'huge'", 'resumable'),
    (['--config=configs/mnist_cnnn.py'], 'configs/mnist_cnnn.py: no such file', 'resumable'),
    ([_TINY, '--workdri=x'], 'workdri', None),
    ([_TINY], '--workdir', None),
    ([_TINY, 'extra'], "unexpected arguments ['extra']", 'resumable'),
    ([_TINY, '--config.optimizer=adamm'], "config.optimizer='adamm' is unknown", 'resumable'),
    ([_TINY, '--config.lr_schedule=cosin'], "config.lr_schedule='cosin' is unknown", 'resumable'),
    ([_TINY, '--config.num_epochs=0'], 'config.num_epochs=0 must be at least 1', 'resumable'),
    ([_TINY, '--config.batch_size=0'], 'batch_size', 'resumable'),
    ([_TINY, '--config.best_mode=up'], "config.best_mode='up' is unknown", 'resumable'),
    ([_TINY,
      '--config.model_kwargs.dense=128'], 'another config (config.model_kwargs.dense', 'resumable'),
    ([_TINY, '--config.seed=1'], 'another config (config.seed', 'resumable'),
    ([_TINY, '--config.optimizer=adam'], 'another config (config.optimizer', 'resumable'),
    ([_TINY, '--config.train_split=train[:50%]'], 'config.train_split', 'resumable'),
    ([_TINY, '--config.train_split=trian'], "config.train_split='trian' is not a split", 'fresh'),
    ([_TINY, '--config.dataset=mnistt'], "config.dataset='mnistt' is not a TFDS dataset", 'fresh'),
    ([_TINY, '--config.normalization=zscore'], "normalization='zscore'", 'fresh'),
    ([_TINY,
      '--config.best_metric=val_acc'], "config.best_metric='val_acc' is not measured", 'fresh'),
    ([_TINY, '--config.model_kwargs.pool=max2'], 'max2', 'fresh'),
    ([_TINY, '--config.data_dir={empty}', '--config.manual_dir={empty}'],
     "does not hold the original files of 'mnist': t10k-images-idx3-ubyte.gz is missing", 'fresh'),
    ([_TINY, '--config.data_dir={empty}',
      '--config.manual_dir={empty}/none'], 'is not a directory', 'fresh'),
    ([_TINY, '--config.data_dir={empty}'], 'is not prepared in', 'fresh'),
    (['--config=configs/celsius.py:tiny',
      '--config.learning_rate=1e30'], 'no checkpoint was saved yet', 'fresh'),
    ([_TINY, '--workdir=/dev/null/run'], '--workdir=/dev/null/run cannot be written', None),
]


@pytest.mark.parametrize('args,culprit,workdir', _BAD_INPUTS,
                         ids=[culprit[:48] for _, culprit, _ in _BAD_INPUTS])
def test_a_bad_input_is_one_error_line_and_leaves_checkpoints_alone(mnist_run, tmp_path, args,
                                                                    culprit, workdir):
  resumable = mnist_run['workdir']
  before = tree_digest(os.path.join(resumable, 'checkpoints'))
  empty = tmp_path / 'empty'
  empty.mkdir()
  args = [a.format(empty=empty) for a in args]
  if '--config.data_dir' not in ' '.join(args) and 'celsius' not in args[0]:
    args.append(f'--config.data_dir={mnist_run["data_dir"]}')
  if workdir:
    args.append(f'--workdir={resumable if workdir == "resumable" else tmp_path / "fresh"}')
  out = run_cli(*args, timeout=300)
  line = _error_line(out)
  assert culprit in line, (args, out.stderr[-2000:])
  if workdir == 'fresh':  # Nothing was trained.
    assert not glob.glob(str(tmp_path / 'fresh' / 'checkpoints' / '[0-9]*')), args
  assert tree_digest(os.path.join(resumable, 'checkpoints')) == before
  assert not os.path.exists(os.path.join(resumable, 'checkpoints_unreadable'))
