"""Shared test helpers: tiny configs on mock data, and the real MNIST files when present."""
import json
import os
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
# Mocked datasets must never meet arrays cached from real ones in ~/tensorflow_datasets.
os.environ['TFDS_DATA_DIR'] = tempfile.mkdtemp(prefix='jaxnotes_tests_tfds_')

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
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


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
