"""Shared test helpers: tiny configs on mock data, and the real MNIST files when present."""
import atexit
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

from lib import cpu

cpu.configure()  # As the launcher does, before JAX, TF or numpy start.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # pylint: disable=g-import-not-at-top
import tensorflow as tf
import tensorflow_datasets as tfds

tf.config.set_visible_devices([], 'GPU')


def _session_dir(prefix: str) -> str:
  """A temporary folder for this test session, removed when the session's process exits."""
  path = tempfile.mkdtemp(prefix=prefix)
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  return path


# Mocked datasets must never meet arrays cached from real ones in ~/tensorflow_datasets.
os.environ['TFDS_DATA_DIR'] = _session_dir('jaxnotes_tests_tfds_')
# Compiled programs are shared by the session's tests (in this process and in the launchers
# they start) and never read from a developer's own cache.
os.environ['JAX_COMPILATION_CACHE_DIR'] = _session_dir('jaxnotes_tests_xla_')
from lib import compilation_cache  # pylint: disable=g-import-not-at-top
from lib import records  # pylint: disable=g-import-not-at-top

compilation_cache.enable()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), 'shared', 'data')


def mock_tfds(num_examples: int = 64):
  """tfds.testing.mock_data: random examples with the real features; nothing is downloaded.

  Mocked datasets never count as prepared, so configs set download=True, which
  mock_data turns into a no-op.
  """
  return tfds.testing.mock_data(num_examples=num_examples)


def tiny(config_module, **overrides):
  """`config_module.get_config('tiny')` with fields overridden."""
  config = config_module.get_config('tiny')
  if 'dataset' in config:
    config.download = True
  config.update(overrides)
  return config


def read_results(workdir: str) -> dict:
  return records.read_json(os.path.join(workdir, 'results.json'))


# `python -m experiments`, printing at exit whether TensorFlow was ever imported.
_REPORT_TENSORFLOW = (
    "import atexit, runpy, sys; atexit.register(lambda: print('tensorflow imported:', "
    "'tensorflow' in sys.modules)); runpy.run_module('experiments', run_name='__main__')")


def run_cli(*args: str, env: dict | None = None, timeout: int = 600,
            report_tensorflow: bool = False) -> subprocess.CompletedProcess:
  """`python -m experiments ARGS` from the repo root (with report_tensorflow, says if TF came in)."""
  command = ['-c', _REPORT_TENSORFLOW, *args] if report_tensorflow else ['-m', 'experiments', *args]
  return subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope='session')
def mnist_dir():
  """The original MNIST files (../shared/data/mnist), or a skip where they are absent."""
  path = os.path.join(SHARED_DATA, 'mnist')
  if not os.path.isfile(os.path.join(path, 'train-images-idx3-ubyte.gz')):
    pytest.skip(f'MNIST files not found in {path} (see ../shared/data/README.md)')
  return path


# Installed as sitecustomize.py: every connection and name lookup fails, and is recorded.
_NO_NETWORK = """
import os, socket
def _blocked(*args, **kwargs):
  with open(os.environ['NETWORK_ATTEMPTS'], 'a') as f:
    f.write(repr(args)[:200] + '\\n')
  raise OSError('network blocked by the test')
socket.getaddrinfo = socket.create_connection = _blocked
_connect = socket.socket.connect
def _connect_local(self, address):
  if self.family in (socket.AF_INET, socket.AF_INET6):
    _blocked(address)
  return _connect(self, address)
socket.socket.connect = _connect_local
socket.socket.connect_ex = _connect_local
"""


def no_network_env(directory: str) -> dict[str, str]:
  """Environment for run_cli in which Python cannot reach the network; attempts land in a file."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'sitecustomize.py'), 'w') as f:
    f.write(_NO_NETWORK)
  return {
      'PYTHONPATH': os.pathsep.join([directory, REPO]), 'NETWORK_ATTEMPTS': os.path.join(
          directory, 'attempts.txt')
  }


def tree_digest(path: str) -> dict[str, str]:
  """SHA-256 of every file under `path`, by relative name: equal digests, byte-for-byte equal trees."""
  digests = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      with open(full, 'rb') as f:
        digests[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
  return digests


@pytest.fixture(scope='session')
def mnist_run(mnist_dir, tmp_path_factory):
  """mnist_cnn:tiny through the launcher, building MNIST offline from the original files.

  Networking is blocked for the whole run (no_network_env). Returns the TFDS
  data_dir (MNIST prepared, arrays cached), the run's workdir and its
  CompletedProcess, plus the file of network attempts.
  """
  root = tmp_path_factory.mktemp('mnist_run')
  env = no_network_env(str(root / 'no_network'))
  out = run_cli('--config=configs/mnist_cnn.py:tiny', f'--workdir={root / "run"}',
                f'--config.data_dir={root / "tfds"}', f'--config.manual_dir={mnist_dir}', env=env)
  return {
      'data_dir': str(root / 'tfds'), 'workdir': str(root / 'run'), 'out': out,
      'network_attempts': env['NETWORK_ATTEMPTS']
  }


@pytest.fixture(scope='session')
def mnist_data_dir(mnist_run):
  """A TFDS data_dir with MNIST built from the original files, checksums verified."""
  assert mnist_run['out'].returncode == 0, mnist_run['out'].stderr[-3000:]
  return mnist_run['data_dir']


# The compile of every config for TPUs (tests/test_aot.py) takes minutes of CPU: it starts
# when collection ends, at low priority, so that it uses what the other tests leave idle, and
# it is checked last.
EVERY_CONFIG_COMPILES = ('tests/test_aot.py::'
                         'test_every_config_and_variant_compiles_for_v5e_1_in_float32_and_v5e_8_'
                         'in_bfloat16')
EVERY_CONFIG_ARGS = ('--targets=v5e-1,v5e-8', '--dtypes=float32,bfloat16', '--paired',
                     f'--data={SHARED_DATA}', '--jobs=2')
background_compiles: dict[str, subprocess.Popen] = {}


def pytest_collection_modifyitems(config, items):
  del config
  items.sort(key=lambda item: item.nodeid == EVERY_CONFIG_COMPILES)  # Stable: the rest in order.


def pytest_collection_finish(session):
  if (not any(item.nodeid == EVERY_CONFIG_COMPILES for item in session.items) or
      len(session.items) == 1 or importlib.util.find_spec('libtpu') is None or
      not os.path.isdir(os.path.join(SHARED_DATA, 'fashion_mnist'))):
    return
  out = tempfile.NamedTemporaryFile('w+', prefix='jaxnotes_compiled_', suffix='.log')
  background_compiles['log'] = out
  background_compiles['process'] = subprocess.Popen([
      sys.executable, '-m', 'benchmarks.compiled', *EVERY_CONFIG_ARGS,
      f"--data_dir={_session_dir('jaxnotes_tests_compiled_tfds_')}"
  ], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True, preexec_fn=lambda: os.nice(15))
  atexit.register(background_compiles['process'].kill)  # A session cut short stops it too.
