"""Real MNIST, built offline from the original files (skipped where ../shared/data is absent)."""
import os

import numpy as np
import pytest

from configs import mnist_cnn
from experiments import classifier
from lib import input_pipeline
from lib.input_pipeline import streaming, tfds_builders
from lib.errors import UserError
from tests.conftest import run_cli


def test_mnist_cnn_reaches_95_percent_in_a_few_hundred_steps(mnist_data_dir, tmp_path):
  config = mnist_cnn.get_config()
  config.update(data_dir=mnist_data_dir, num_epochs=1, steps_per_epoch=300, validation_steps=2,
                log_every_steps=100)
  results = classifier.train_and_evaluate(config, str(tmp_path))
  assert results['steps'] == 300
  assert results['test_accuracy'] >= 0.95, results['test_accuracy']


def test_real_split_names_are_checked(mnist_data_dir):
  config = mnist_cnn.get_config()
  config.update(data_dir=mnist_data_dir, eval_split='validation')
  with pytest.raises(UserError, match=r"config.eval_split='validation' is not a split of 'mnist'"):
    input_pipeline.image_classification(config)


def test_mnist_and_fashion_mnist_built_in_one_data_dir_stay_apart(mnist_data_dir, mnist_dir):
  # Same file names in both: TFDS's shared extraction cache once built "fashion_mnist" from MNIST.
  fashion_dir = mnist_dir.replace('mnist', 'fashion_mnist')
  if not os.path.isdir(fashion_dir):
    pytest.skip(f'Fashion-MNIST files not found in {fashion_dir}')
  means = {}
  for name, manual_dir in (('mnist', mnist_dir), ('fashion_mnist', fashion_dir)):
    config = mnist_cnn.get_config()
    config.update(dataset=name, data_dir=mnist_data_dir, manual_dir=manual_dir)
    builder = tfds_builders.builder(config)
    tfds_builders.build(builder, config)
    images = builder.as_dataset(split='test').map(lambda ex: ex['image'])
    means[name] = float(input_pipeline.channel_stats(images.batch(4096).as_numpy_iterator())[0][0])
  # Published test-set pixel means: MNIST 33.8, Fashion-MNIST 73.1 (of 255).
  assert means['mnist'] == pytest.approx(33.8, abs=0.5), means
  assert means['fashion_mnist'] == pytest.approx(73.1, abs=0.5), means


def test_wrong_files_in_manual_dir_are_named_before_any_build(tmp_path, mnist_dir):
  """Each file by size, then SHA-256: a file of the right size and wrong bytes is caught too."""
  fake = tmp_path / 'manual'
  fake.mkdir()
  for name in ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'):
    (fake / name).write_bytes((open(os.path.join(mnist_dir, name), 'rb').read()))
  (fake / 't10k-images-idx3-ubyte.gz').write_bytes(b'not mnist')
  size = os.path.getsize(os.path.join(mnist_dir, 't10k-labels-idx1-ubyte.gz'))
  (fake / 't10k-labels-idx1-ubyte.gz').write_bytes(bytes(size))
  config = mnist_cnn.get_config()
  config.update(data_dir=str(tmp_path / 'tfds'), manual_dir=str(fake))
  with pytest.raises(
      UserError, match=(
          r"does not hold the original files of 'mnist': t10k-images-idx3-ubyte.gz has 9 bytes, "
          r"not 1648877; t10k-labels-idx1-ubyte.gz has SHA-256 [0-9a-f]{12}\.\.\., not f7ae60f92e00"
      )):
    input_pipeline.image_info(config)  # The check the experiments make before any work.
  assert not os.path.exists(tmp_path / 'tfds' / 'mnist' / '3.0.1' / 'dataset_info.json')


def test_arrays_cached_beside_tfds_load_without_tensorflow_and_equal_tfds(mnist_data_dir, tmp_path):
  config = mnist_cnn.get_config()
  config.update(data_dir=mnist_data_dir)
  data = input_pipeline.image_classification(config)  # Read from TFDS, cached (or loaded).
  assert isinstance(data.train,
                    input_pipeline.ArraySource) and data.train.arrays['x'].dtype == np.uint8
  assert data.train.arrays['x'].shape == (60000, 28, 28, 1)
  builder = tfds_builders.builder(config)
  tfds_test = streaming.read_split(builder, 'test', 'test_split')
  for k in ('x', 'y'):
    np.testing.assert_array_equal(data.test.arrays[k], tfds_test[k])
  out = run_cli('--config=configs/mnist_cnn.py:tiny', f'--config.data_dir={mnist_data_dir}',
                f'--workdir={tmp_path / "run"}', report_tensorflow=True)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'tensorflow imported: False' in out.stdout, out.stdout[-2000:]
