"""Gradient descent by hand, with `jax.grad` where TensorFlow uses a gradient tape.

The notes' "gradient tape" records operations during the forward pass so that
`tape.gradient` can replay them backwards. JAX has no tape to manage: `jax.grad`
turns the loss function itself into its gradient function.

    # TensorFlow (the MIT lab)                 # JAX (this module)
    with tf.GradientTape() as tape:            grad = jax.grad(loss)(x)
      loss = (x - 4.0) ** 2                    x = x - lr * grad
    grad = tape.gradient(loss, x)
    x.assign(x - lr * grad)

The same descent runs twice: written out with `jax.grad`, and with `optax.sgd`,
the optimizer the training engine uses. Both steps are compiled once and the
500 steps run as one `lax.scan`, keeping every x for the plot. This experiment
optimizes one number without data, so it does not go through lib.train.fit.
"""
import os
from typing import Any

from clu import metric_writers
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lib import aot
from lib import checkpoints
from lib import parallel
from lib import plots


def descend(x0: jax.Array, target: float, lr: float, num_steps: int) -> tuple[jax.Array, jax.Array]:
  """x -= lr * d/dx (x - target)^2, by hand and with optax.sgd.

  Returns:
    The trajectories (num_steps + 1 values each, x0 first) of both.
  """
  loss = lambda x: (x - target)**2

  def by_hand(x, _):
    x = x - lr * jax.grad(loss)(x)
    return x, x

  tx = optax.sgd(lr)

  def with_optax(carry, _):
    x, opt_state = carry
    updates, opt_state = tx.update(jax.grad(loss)(x), opt_state)
    x = optax.apply_updates(x, updates)
    return (x, opt_state), x

  _, xs = jax.lax.scan(by_hand, x0, length=num_steps)
  _, xs_optax = jax.lax.scan(with_optax, (x0, tx.init(x0)), length=num_steps)
  return jnp.concatenate([x0[None], xs]), jnp.concatenate([x0[None], xs_optax])


def headline(results: dict[str, Any]) -> str:
  """Where both descents ended, against the closed form."""
  return (f"x = {results['x_final']:.5f} by hand, {results['x_final_optax']:.5f} with optax "
          f"(closed form {results['x_final_closed_form']:.5f}) after {results['steps']} steps")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs both descents; writes x per step (TensorBoard and a plot), a checkpoint and results.json.

  Args:
    config: configs/gradient_descent.py.
    workdir: the run's directory.

  Returns:
    The results (the launcher writes them to results.json).
  """
  program = jax.jit(descend, static_argnums=(1, 2, 3))
  if aot.active():  # --compile_for: the descent, on one device of the target.
    x0 = jax.ShapeDtypeStruct((), jnp.float32, sharding=parallel.replicated(parallel.make_mesh()))
    aot.compile(f'both descents, {config.num_steps} steps', program, x0, config.target,
                config.learning_rate, config.num_steps)
    raise aot.Compiled()
  x0 = jax.random.normal(jax.random.PRNGKey(config.seed), ())
  ckpt = checkpoints.Checkpoints(workdir, keep=1)
  if ckpt.latest_step() == config.num_steps:  # Done before: report the saved trajectories.
    saved, _ = ckpt.restore(config.num_steps, {
        'xs': jnp.zeros(config.num_steps + 1), 'xs_optax': jnp.zeros(config.num_steps + 1)
    })
    xs, xs_optax = saved['xs'], saved['xs_optax']
  else:
    xs, xs_optax = program(x0, config.target, config.learning_rate, config.num_steps)
    ckpt.save(config.num_steps, {'xs': xs, 'xs_optax': xs_optax}, {})
  ckpt.close()
  xs, xs_optax = np.asarray(xs), np.asarray(xs_optax)

  # TensorBoard only: a hundred log lines of x would bury the summary.
  writer = (metric_writers.SummaryWriter(workdir)
            if jax.process_index() == 0 else metric_writers.MultiWriter([]))
  for step in range(0, config.num_steps + 1, max(1, config.num_steps // 100)):
    writer.write_scalars(
        step, {'x': xs[step], 'x_optax': xs_optax[step], 'loss': (xs[step] - config.target)**2})
  writer.flush()
  steps = np.arange(config.num_steps + 1)
  plots.lines(steps, {'x (jax.grad)': xs, 'x (optax.sgd)': xs_optax},
              os.path.join(workdir, 'plots', 'x_per_step.png'), xlabel='step', ylabel='x',
              title=f'minimizing (x - {config.target:g})^2, lr {config.learning_rate:g}',
              hline=config.target)
  results = {
      'x_initial': float(xs[0]),
      'x_final': float(xs[-1]),
      'x_final_optax': float(xs_optax[-1]),
      'loss_final': float((xs[-1] - config.target)**2),
      'steps': config.num_steps,
      # Gradient descent on this quadratic is the map e -> (1 - 2 lr) e on the error e.
      'x_final_closed_form': float(config.target + (xs[0] - config.target) *
                                   (1 - 2 * config.learning_rate)**config.num_steps),
  }
  return results
