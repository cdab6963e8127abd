"""The compiled programs: the train step (one or a scan of several a call), the eval step, evaluation."""
from collections.abc import Callable, Sequence
from typing import Any

from clu import metrics as clu_metrics
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lib import input_pipeline
from lib import parallel
from lib.cpu import conv as cpu_conv
from lib.train.state import TrainState

# Maps (model outputs, batch) to per-example values; 'loss' is minimized. See lib/tasks.py.
Task = Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]]


def metrics_collection(names: Sequence[str]) -> type[clu_metrics.Collection]:
  """A CLU collection that averages each named per-example value (masked where asked)."""
  return clu_metrics.Collection.create(
      **{name: clu_metrics.Average.from_output(name) for name in names})


def model_rngs(key: jax.Array, streams: Sequence[str]) -> dict[str, jax.Array]:
  return dict(zip(streams, jax.random.split(key, len(streams)))) if streams else {}


# Folded into the run's key for the augmentation's keys, apart from the model's streams.
_AUGMENT_STREAM = 2**31 - 2


def _cast(tree: Any, dtype: Any) -> Any:
  """Floating-point leaves of `tree` as `dtype`; others as they are."""
  return jax.tree.map(lambda a: a.astype(dtype)
                      if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _vmap_population(fn: Callable[..., Any], in_axes: Any) -> Callable[..., Any]:
  """`fn` vmapped over a population's members, traced as a population's step: lib.cpu then
  computes its layers with kernels that take every member at once (lib.cpu.conv)."""
  def traced(*args):
    with cpu_conv.population_steps():
      return fn(*args)

  return jax.vmap(traced, in_axes=in_axes)


def _apply(state: TrainState, params: Any, x: jax.Array, compute_dtype: Any, **kwargs: Any) -> Any:
  """The model on `x` in `compute_dtype` (params and inputs cast; outputs back to float32)."""
  if compute_dtype == jnp.float32:
    return state.apply_fn({'params': params, **state.model_state}, x, **kwargs)
  out = state.apply_fn({'params': _cast(params, compute_dtype), **state.model_state},
                       _cast(x, compute_dtype), **kwargs)
  return _cast(out, jnp.float32)


def make_train_step(task: Task, collection: type[clu_metrics.Collection],
                    rng_streams: Sequence[str] = (), compute_dtype: Any = jnp.float32,
                    ema_decay: float = 0.0) -> Callable[..., Any]:
  """`train_step(state, batch) -> (state, metrics)`: one gradient step on the mean loss.

  The model computes in `compute_dtype` while the params, their gradients and
  the optimizer stay float32; with `ema_decay`, state.ema_params follows the
  params (optax.incremental_update).
  """
  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    rngs = model_rngs(jax.random.fold_in(state.rng, state.step), rng_streams)

    def loss_fn(params):
      outputs, model_state = _apply(state, params, batch['x'], compute_dtype, train=True, rngs=rngs,
                                    mutable=list(state.model_state))
      values = task(outputs, batch)
      return jnp.mean(values['loss']), (values, model_state)

    (_, (values, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, model_state=model_state)
    if ema_decay:
      ema = optax.incremental_update(state.params, state.ema_params, 1 - ema_decay)
      state = state.replace(ema_params=ema)
    return state, collection.single_from_model_output(**values)

  return train_step


def make_eval_step(task: Task, collection: type[clu_metrics.Collection],
                   rng_streams: Sequence[str] = (),
                   compute_dtype: Any = jnp.float32) -> Callable[..., Any]:
  """`eval_step(state, batch) -> metrics`: the task's values in evaluation mode, padding masked."""
  def eval_step(state: TrainState, batch: dict[str, jax.Array]):
    # A fixed key, so evaluating the same weights twice gives the same numbers.
    rngs = model_rngs(jax.random.fold_in(state.rng, 2**31 - 1), rng_streams)
    outputs = _apply(state, state.params, batch['x'], compute_dtype, train=False, rngs=rngs)
    return collection.single_from_model_output(**task(outputs, batch), mask=batch['mask'])

  return eval_step


class TrainSteps:
  """The train step as `fit` runs it: fed by the input pipeline, compiled once per augmentation.

  `train_steps(state, data, inputs, which, steps)` runs `steps` steps: each
  gathers its batch from `data` (the split on the devices; {} for a streamed
  split) as `inputs` say (Source.train_feed), preprocesses it, augments
  it with augmentation.train[which] and takes the gradient step. With
  steps_per_execution > 1 the steps run in a `lax.scan` over the call's batches,
  stacked (gathered at once from the devices' split, or streamed), returning
  each step's metrics stacked on a leading axis. With `members` (a population's
  state, config.num_seeds), the step is vmapped over the members: each its own
  state and indices, the data shared; each step gathers its own batches.
  """
  def __init__(self, task: Task, collection: type[clu_metrics.Collection], mesh: jax.sharding.Mesh,
               rng_streams: Sequence[str], preprocess: input_pipeline.Preprocess,
               augmentation: input_pipeline.Augmentation, steps_per_execution: int,
               compute_dtype: Any = jnp.float32, ema_decay: float = 0.0, members: int = 0):
    self._one_step = make_train_step(task, collection, rng_streams, compute_dtype, ema_decay)
    self._mesh, self._preprocess, self._members = mesh, preprocess, members
    self._augmentation, self._scan = augmentation, steps_per_execution > 1
    self._jitted: dict[int, Any] = {}

  def _build(self, which: int) -> Any:
    augment, sharding = self._augmentation.train[which], parallel.batch_sharding(self._mesh)

    def fed_step(state, data, inputs):
      batch = input_pipeline.batch_of(data, inputs, sharding, state.step)
      key = jax.random.fold_in(jax.random.fold_in(state.rng, _AUGMENT_STREAM), state.step)
      return self._one_step(state, input_pipeline.model_inputs(batch, self._preprocess, augment,
                                                               key))

    if self._members:  # A population trains on the devices' split: a block of indices.
      fed_step = _vmap_population(fed_step, (0, None, {'idx': 1, 'first': None}))
    if self._scan:
      stacked = parallel.stacked_batch_sharding(self._mesh)

      def fn(state, data, inputs, steps):
        if 'batch' not in inputs and not self._members:  # The call's batches in one gather.
          inputs = {'batch': input_pipeline.batch_of(data, inputs, stacked, state.step, steps)}
        if 'batch' in inputs:  # Stacked: one batch per step.
          return jax.lax.scan(lambda s, b: fed_step(s, data, {'batch': b}), state, inputs['batch'])
        return jax.lax.scan(lambda s, _: fed_step(s, data, inputs), state, length=steps)
    else:
      # The plain step: inside a scan, even of one step, XLA:CPU's convolutions lose
      # their fast paths (the MNIST CNN ran ~11x slower).
      def fn(state, data, inputs, steps):
        del steps  # One.
        return fed_step(state, data, inputs)

    replicated = parallel.replicated(self._mesh)
    return jax.jit(fn, out_shardings=(replicated, replicated), donate_argnums=0, static_argnums=3)

  def jitted(self, which: int = 0) -> Any:
    """The jitted call of augmentation `which`: (state, data, inputs, steps) -> (state, metrics)."""
    if which not in self._jitted:
      self._jitted[which] = self._build(which)
    return self._jitted[which]

  def __call__(self, state: TrainState, data: dict[str, jax.Array], inputs: dict[str, Any],
               which: int = 0, steps: int = 1) -> tuple[TrainState, Any]:
    return self.jitted(which)(state, data, inputs, steps)

  def compiles(self) -> int:
    """Compilations in this process: one per augmentation and shape of the inputs."""
    return sum(f._cache_size() for f in self._jitted.values())  # pylint: disable=protected-access


def jit_eval_step(task: Task, names: Sequence[str], mesh: jax.sharding.Mesh,
                  rng_streams: Sequence[str] = (), compute_dtype: Any = jnp.float32,
                  members: int = 0) -> Callable[..., Any]:
  """The eval step on prepared batches (input_pipeline.eval_batches), compiled once per shape.

  With `members`, vmapped over a population's states, each member on the same batch.
  """
  step = make_eval_step(task, metrics_collection(names), rng_streams, compute_dtype)
  if members:
    step = _vmap_population(step, (0, None))
  return jax.jit(step, out_shardings=parallel.replicated(mesh))


def evaluate(eval_step: Callable[..., Any], state: TrainState, split: input_pipeline.Source,
             batch_size: int, prefix: str, max_batches: int | None = None,
             augment: input_pipeline.Augment | None = None) -> dict[str, Any]:
  """Averages the task's values over every example of `split` (padding masked), on the devices.

  Args:
    eval_step: from `jit_eval_step`.
    state: the weights to evaluate.
    split: the split.
    batch_size: the global evaluation batch.
    prefix: put before each metric's name, e.g. 'val_'.
    max_batches: at most this many batches (Keras' validation_steps).
    augment: the evaluation augmentation, keyed by each example's index.

  Returns:
    The metrics, after one transfer to the host: floats, or for a population
    an array of its members' values each.
  """
  total = None
  for batch in input_pipeline.eval_batches(split, batch_size, max_batches, augment):
    m = eval_step(state, batch)
    total = m if total is None else total.merge(m)
  # Each Average's total / count on the host: no compile for that division, and a
  # population's member axis needs no special case.
  values = {
      k: np.asarray(m.total, np.float64) / np.asarray(m.count, np.float64)
      for k, m in vars(jax.device_get(total)).items()
      if not k.startswith('_')
  }
  return {prefix + k: float(v) if v.ndim == 0 else v for k, v in values.items()}
