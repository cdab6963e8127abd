"""Image classification: logits, softmax and the Keras-style training loop of the notes.

Notes covered: classification (the model outputs logits; softmax turns them into
a probability distribution, plotted per test image; the loss takes the logits
directly, which is numerically stable), pixel normalization, steps_per_epoch /
validation_steps, cached training data, the best checkpoint and early stopping.
Configs: configs/mnist_cnn.py, configs/fashion_mlp.py, configs/fashion_cnn.py.
"""
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lib import aot
from lib import input_pipeline
from lib import models
from lib import parallel
from lib import plots
from lib import tasks
from lib import train

# The results are fit's metrics: config.num_seeds > 1 reports each seed's.
REPORTS_EACH_MEMBER = True


def headline(results: dict[str, Any]) -> str:
  """Test accuracy and loss (and the LR range test's suggestion)."""
  line = f"test accuracy {results['test_accuracy']:.4f}, test loss {results['test_loss']:.4f}"
  if results.get('suggested_lr'):
    line += f"; LR range test suggests learning_rate={results['suggested_lr']:.2g}"
  return line


def _compile_predictions(predict, state: train.TrainState, test: input_pipeline.Source) -> None:
  """lib.aot: the predictions figure's forward pass on 1,000 test images, for the trained state."""
  if train.members(state):  # The figure shows seed config.seed's model.
    state = train.member(state, 0)
  x = jax.ShapeDtypeStruct((1000, *test.spec['x'].shape), jnp.float32,
                           sharding=parallel.replicated(parallel.make_mesh()))
  aot.compile('predictions figure: 1,000 test images', predict,
              {'params': state.params, **state.model_state}, x)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates a classifier; writes plots and results.json into `workdir`.

  Args:
    config: a classifier config (configs/mnist_cnn.py and friends).
    workdir: the run's directory.

  Returns:
    The results (the launcher writes them to results.json).
  """
  info = input_pipeline.image_info(config)  # Checked before any work.
  model = models.create(config.model, outputs=info.num_classes, **config.model_kwargs)
  data = input_pipeline.image_classification(config, info=info)
  # One compiled program for the figure's probabilities: op by op, a CNN's forward pass is
  # many times slower.
  predict = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x)))
  aot.after_training(lambda state: _compile_predictions(predict, state, data.test))
  state, summary = train.fit(config, workdir, model=model, task=tasks.classification,
                             train=data.train, val=data.val, test=data.test)

  if jax.process_index() == 0:
    plot_dir = os.path.join(workdir, 'plots')
    if summary['history']:
      plots.training_curves(summary['history'], os.path.join(plot_dir, 'curves.png'))
    # A few mistakes beside correct answers tell more than 16 confident hits.
    batch = input_pipeline.first_examples(data.test, 1000)
    x, y = batch['x'], batch['y']
    probs = np.asarray(predict({'params': state.params, **state.model_state}, x))
    wrong = np.flatnonzero(probs.argmax(-1) != y)[:6]
    right = np.flatnonzero(probs.argmax(-1) == y)[:16 - len(wrong)]
    show = np.sort(np.concatenate([wrong, right]))
    plots.prediction_grid(x[show], y[show], probs[show], data.class_names,
                          os.path.join(plot_dir, 'predictions.png'))
  return summary
