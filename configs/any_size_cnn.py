"""A fully convolutional CNN that takes any image size: MNIST digits on canvases of several sizes.

Training batches put each digit, rescaled to a random side between 28 and
max_digit pixels, at a random place on a blank canvas; each batch draws its
canvas side from train_sizes (a few buckets, so the train step compiles only a
few times). The same weights are then evaluated on canvases of each side in
eval_sizes, including sides never seen in training.
Command:
  python -m experiments --config=configs/any_size_cnn.py --workdir=runs/any_size_cnn \
      --config.manual_dir=../shared/data/mnist
Fashion-MNIST: --config.dataset=fashion_mnist --config.manual_dir=../shared/data/fashion_mnist.
Expected: test accuracy 0.9879 ± 0.0012 at 28 px falling to 0.9718 ± 0.0045 at 112 px
(seeds 0-2); three train-step compilations. Measured values, hardware and time:
README results table.
Smoke test: --config=configs/any_size_cnn.py:tiny.

Variant cats_vs_dogs: the same network on TFDS cats_vs_dogs (23,262 photos,
2 classes) at near-native sizes, on a machine with internet:
  python -m experiments --config=configs/any_size_cnn.py:cats_vs_dogs \
      --workdir=runs/cats_vs_dogs --config.download=True
Not run here (no internet; this machine has 2 CPU cores): no measured result
yet. The tests run its whole path on tfds.testing.mock_data.
"""
import ml_collections

from configs import common

# Every variant get_config takes ('' is the config as it is).
VARIANTS = ('', 'cats_vs_dogs', 'tiny')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = common.tfds_data(common.training('any_size_cnn'), 'mnist')
  c.model = 'any_size_cnn'  # 'cnn' (Flatten + Dense) refuses every size but the one it was built for.
  # Four blocks: a receptive field of ~50 px, so a 56-px digit is seen whole (three blocks
  # reach 0.82 at 56 px against 0.94 at 28, docs/experiments.md).
  c.model_kwargs = ml_collections.ConfigDict({'features': (16, 32, 64, 128), 'pool': 'max'})
  c.normalization = 'unit'  # Required: the blank canvas is 0, the digits' background.
  c.optimizer = 'adam'
  c.learning_rate = 1e-3
  c.lr_schedule = 'cosine'
  c.batch_size = 128
  c.num_epochs = 6
  c.log_every_steps = 100
  c.best_metric = 'val_accuracy'  # Validation is on the plain 28x28 test digits.
  c.best_mode = 'max'

  c.train_sizes = (28, 42, 56)  # Canvas sides of training batches (one per batch, at random).
  c.max_digit = 56  # Largest side of a rescaled digit; the least is the original 28.
  c.eval_sizes = (28, 40, 56, 84, 112)  # Canvas sides the trained weights are tested on.
  # Native-size mode when not empty (cats_vs_dogs): no canvases; each side of an
  # image snaps to the nearest of these, and a batch holds one (height, width).
  c.bucket_sides = ()
  c.max_side = 0  # Native-size mode: larger images first shrink (aspect kept) to this longer side.
  if variant == 'cats_vs_dogs':
    c.dataset = 'cats_vs_dogs'
    c.train_split = 'train[:80%]'  # The dataset has one split: 80/10/10.
    c.eval_split = 'train[80%:90%]'
    c.test_split = 'train[90%:]'
    c.shuffle_buffer = 20_000
    # 16 shapes at most; photos are mostly 4:3 or 3:4 near 500x375, so a few dominate.
    c.bucket_sides = (128, 192, 256, 320)
    c.max_side = 320
    c.model_kwargs = ml_collections.ConfigDict({'features': (32, 64, 128, 256, 256),
                                                'pool': 'avg'})  # Photos: average the evidence.
    c.batch_size = 64
    c.eval_batch_size = 64  # Each shape's last batch is padded: small batches pad little.
    c.num_epochs = 30
    c.best_metric = 'val_accuracy'
    c.restore_best = True
    c.train_sizes = c.eval_sizes = ()
    c.max_digit = 0
  if variant == 'tiny':
    c.train_sizes = (28, 36)
    c.max_digit = 36
    c.eval_sizes = (28, 44)
  return common.variant(c, '' if variant == 'cats_vs_dogs' else variant)
