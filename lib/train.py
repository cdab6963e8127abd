"""The training engine: state, optimizer, the jitted train and eval steps, and the fit loop.

Every experiment that learns from batches trains here. `fit` resumes from the
workdir's latest checkpoint, evaluates every example of the validation split
every config.eval_every_epochs, keeps the best checkpoint, stops early on a
stalled metric, stops on a NaN or inf loss, and saves before it exits on
SIGINT or SIGTERM. The host reads each call's metrics once, one call late, so
it never waits on the steps it has just dispatched; a call may span several
short epochs (config.steps_per_execution), and the terminal gets at most one
line per epoch and per config.log_every_seconds.
"""
from collections.abc import Callable, Sequence
import contextlib
import copy
import dataclasses
import functools
import math
import os
import signal
import threading
import time
from typing import Any

from absl import logging
from clu import metrics as clu_metrics
from clu import parameter_overview
import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lib import aot
from lib import checkpoints
from lib import input_pipeline
from lib import models
from lib import parallel
from lib import plots
from lib import summary
from lib.cpu import conv as cpu_conv
from lib.errors import Interrupted, NonFiniteLossError, UserError

# Maps (model outputs, batch) to per-example values; 'loss' is minimized. See lib/tasks.py.
Task = Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]]

OPTIMIZERS = ('sgd', 'adam')
SCHEDULES = ('constant', 'cosine', 'warmup_cosine')
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class TrainState(train_state.TrainState):
  """Params, optimizer state and step (from Flax), plus:

  Attributes:
    model_state: the model's other variable collections, e.g. {'batch_stats': ...}; {} if none.
    rng: the run's base key; step s uses fold_in(rng, s), so a resumed run draws the same keys.
    ema_params: with config.ema_decay, the exponential moving average of the
      params (evaluated beside them, checkpointed with them); None otherwise.
  """
  model_state: Any
  rng: jax.Array
  ema_params: Any = None


def check_config(config: ml_collections.ConfigDict) -> None:
  """Checks the engine's config fields; cheap, so experiments call it before any work.

  Raises:
    UserError: naming the field, its value and what is allowed.
  """
  def allowed(field, options):
    if config[field] not in options:
      raise UserError(f'config.{field}={config[field]!r} is unknown; choose one of {list(options)}')

  allowed('optimizer', OPTIMIZERS)
  allowed('lr_schedule', SCHEDULES)
  allowed('best_mode', ('max', 'min'))
  allowed('compute_dtype', tuple(COMPUTE_DTYPES))
  for field in ('num_epochs', 'log_every_steps', 'checkpoint_every_epochs', 'eval_every_epochs',
                'keep_checkpoints', 'steps_per_execution'):
    if config[field] < 1:
      raise UserError(f'config.{field}={config[field]} must be at least 1')
  for field in ('steps_per_epoch', 'validation_steps'):
    if config[field] is not None and config[field] < 1:
      raise UserError(
          f'config.{field}={config[field]} must be at least 1, or None for a whole split')
  for field in ('weight_decay', 'grad_clip_norm', 'profile_steps'):
    if config[field] < 0:
      raise UserError(f'config.{field}={config[field]} must be >= 0 (0 is off)')
  if config.grad_accum_steps < 1:
    raise UserError(f'config.grad_accum_steps={config.grad_accum_steps} must be at least 1 '
                    '(1 is off)')
  if not 0 <= config.ema_decay < 1:
    raise UserError(f'config.ema_decay={config.ema_decay} must be in [0, 1) (0 is off; '
                    'e.g. 0.999)')
  if config.get('num_seeds', 1) < 1:
    raise UserError(f'config.num_seeds={config.num_seeds} must be at least 1')
  if config.lr_finder and config.get('num_seeds', 1) > 1:
    raise UserError('config.lr_finder sweeps the rate for one model: it needs config.num_seeds=1')
  if config.lr_finder and config.grad_accum_steps > 1:
    raise UserError('config.lr_finder sweeps the rate step by step: it needs '
                    'config.grad_accum_steps=1')
  if config.log_every_seconds < 0:
    raise UserError(f'config.log_every_seconds={config.log_every_seconds} must be >= 0')
  if config.early_stopping_patience < 0:
    raise UserError('config.early_stopping_patience must be >= 0 (0 never stops early)')
  if (config.restore_best or config.early_stopping_patience) and not config.best_metric:
    raise UserError(
        'config.restore_best and config.early_stopping_patience need config.best_metric')
  # Streamed splits ask for equal shares per device too (lib.input_pipeline).
  parallel.local_batch_size(config.batch_size, 'batch_size', even=False)
  parallel.local_batch_size(config.eval_batch_size, 'eval_batch_size', even=False)


def epochs_to_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> tuple[int, int]:
  """Turns epochs into steps, with Keras' meaning of steps_per_epoch.

  Args:
    config: `batch_size`, `num_epochs`, `steps_per_epoch` (None: one pass
      over the training split, num_train_examples // batch_size; the last
      partial batch is dropped, a different one each pass) and
      `steps_per_execution` (an epoch longer than it is rounded down to a
      multiple of it).
    num_train_examples: examples in the training split.

  Returns:
    (steps_per_epoch, total_steps).
  """
  steps_per_epoch = config.steps_per_epoch or num_train_examples // config.batch_size
  if steps_per_epoch < 1:
    raise UserError(f'config.batch_size={config.batch_size} is larger than the '
                    f'{num_train_examples} training examples')
  if steps_per_epoch > config.steps_per_execution:
    steps_per_epoch -= steps_per_epoch % config.steps_per_execution
  return steps_per_epoch, config.num_epochs * steps_per_epoch


def steps_per_call(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """Steps of one compiled call: config.steps_per_execution, or whole epochs where those are shorter.

  A call never ends inside an epoch, so evaluations and checkpoints fall
  between calls; with epochs shorter than steps_per_execution (celsius: one
  step each) a call runs as many whole epochs as fit in it.
  """
  if config.steps_per_execution <= steps_per_epoch:
    return config.steps_per_execution
  return config.steps_per_execution // steps_per_epoch * steps_per_epoch


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int,
                           steps_per_epoch: int) -> optax.Schedule:
  """`config.lr_schedule` over the run: constant, cosine decay to 0, or linear warmup then cosine."""
  lr = config.learning_rate
  if config.lr_schedule == 'constant':
    return optax.constant_schedule(lr)
  if config.lr_schedule == 'cosine':
    return optax.cosine_decay_schedule(lr, total_steps)
  warmup = int(config.warmup_epochs * steps_per_epoch)
  return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total_steps)


def _kernels(params: Any) -> Any:
  """Weight decay's mask: the kernels (2 or more axes), not biases or normalization scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(config: ml_collections.ConfigDict,
                     schedule: optax.Schedule) -> optax.GradientTransformation:
  """`config.optimizer` ('sgd' with `config.momentum`, or 'adam') following `schedule`.

  With the config's options (each off at 0, or 1 for grad_accum_steps):
  weight_decay, decoupled from the gradient (AdamW; for SGD added after the
  momentum, then scaled by the rate: SGDW), on kernels only; grad_clip_norm,
  the gradient's global norm clipped first; grad_accum_steps, the gradients of
  that many steps averaged into one update (optax.MultiSteps). `schedule` is
  then a function of the update, not of the step.
  """
  decay = config.weight_decay
  if config.optimizer == 'sgd' and decay:
    tx = optax.chain(
        optax.trace(decay=config.momentum) if config.momentum else optax.identity(),
        optax.add_decayed_weights(decay, mask=_kernels), optax.scale_by_learning_rate(schedule))
  elif config.optimizer == 'sgd':
    tx = optax.sgd(schedule, momentum=config.momentum or None)
  else:
    tx = optax.adamw(schedule, weight_decay=decay, mask=_kernels) if decay else optax.adam(schedule)
  if config.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  if config.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum_steps).gradient_transformation()
  return tx


def create_train_state(
    config: ml_collections.ConfigDict, model: nn.Module, input_shape: Sequence[int],
    input_dtype: Any, tx: optax.GradientTransformation, sharding: jax.sharding.Sharding,
    rng_streams: Sequence[str] = ()) -> TrainState:
  """Initializes params from `config.seed`, replicated over the mesh.

  The state's apply_fn is the model's, its convolutions computed as this backend
  does best (lib.cpu.conv.specialize): the engine's one choice of implementation.

  With config.num_seeds > 1, a population: every leaf gets a leading axis of
  that many members, member k initialized as a run with seed + k would be.

  Args:
    config: the run's config (`seed`, `num_seeds`).
    model: the Flax module.
    input_shape: shape of one example's model input, without the batch axis.
    input_dtype: its dtype.
    tx: the optimizer.
    sharding: where the state lives (replicated).
    rng_streams: the model's random streams besides 'params' (e.g. 'dropout').

  Returns:
    The TrainState at step 0.
  """
  def init(seed):
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
    rngs = dict(zip(('params', *rng_streams), jax.random.split(init_rng, 1 + len(rng_streams))))
    variables = model.init(rngs, jnp.zeros((1, *input_shape), input_dtype), train=False)
    model_state = {k: v for k, v in variables.items() if k != 'params'}
    ema = variables['params'] if config.ema_decay else None
    return TrainState.create(apply_fn=cpu_conv.specialize(model.apply), params=variables['params'],
                             tx=tx, model_state=model_state, rng=state_rng, ema_params=ema)

  n = config.get('num_seeds', 1)
  if parallel.is_target():  # lib.aot: the state's shapes on the target's devices, no values.
    shapes = jax.eval_shape(
        init if n == 1 else jax.vmap(init),
        jnp.int32(config.seed) if n == 1 else config.seed + jnp.arange(n, dtype=jnp.int32))
    return jax.tree.map(lambda a: aot.abstract(a, sharding), shapes)
  if n == 1:
    return jax.jit(init, static_argnums=0, out_shardings=sharding)(config.seed)
  # Member by member, then stacked; not vmapped: a vmapped init batches the orthogonal
  # initializers' QR (LSTM, GRU cells), and jaxlib's batched LAPACK calls wait on XLA:CPU's
  # thread pool from inside it, so two at once deadlock a machine with 2 cores.
  init_member = jax.jit(init, out_shardings=sharding)
  population = [init_member(jnp.int32(config.seed + k)) for k in range(n)]
  return jax.jit(lambda *m: jax.tree.map(lambda *leaves: jnp.stack(leaves), *m),
                 out_shardings=sharding)(*population)


def members(state: TrainState) -> int:
  """Models in `state`: 0 for a single model, N for a population of N (config.num_seeds)."""
  return 0 if jnp.ndim(state.step) == 0 else state.step.shape[0]


def member(state: TrainState, k: int) -> TrainState:
  """Model `k` of a population (seed config.seed + k), as a single model's state."""
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype, sharding=a.sharding)
      if isinstance(a, jax.ShapeDtypeStruct) else a[k], state)


def current_step(state: TrainState) -> int:
  """The step `state` has trained (the members of a population share it)."""
  return int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])


def metrics_collection(names: Sequence[str]) -> type[clu_metrics.Collection]:
  """A CLU collection that averages each named per-example value (masked where asked)."""
  return clu_metrics.Collection.create(
      **{name: clu_metrics.Average.from_output(name) for name in names})


def _rngs(key: jax.Array, streams: Sequence[str]) -> dict[str, jax.Array]:
  return dict(zip(streams, jax.random.split(key, len(streams)))) if streams else {}


# Folded into the run's key for the augmentation's keys, apart from the model's streams.
_AUGMENT_STREAM = 2**31 - 2


def _cast(tree: Any, dtype: Any) -> Any:
  """Floating-point leaves of `tree` as `dtype`; others as they are."""
  return jax.tree.map(lambda a: a.astype(dtype)
                      if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


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
    rngs = _rngs(jax.random.fold_in(state.rng, state.step), rng_streams)

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
    rngs = _rngs(jax.random.fold_in(state.rng, 2**31 - 1), rng_streams)
    outputs = _apply(state, state.params, batch['x'], compute_dtype, train=False, rngs=rngs)
    return collection.single_from_model_output(**task(outputs, batch), mask=batch['mask'])

  return eval_step


class TrainSteps:
  """The train step as `fit` runs it: fed by the input pipeline, compiled once per augmentation.

  `train_steps(state, data, inputs, which, steps)` runs `steps` steps: each
  gathers its batch from `data` (the split on the devices; {} for a streamed
  split) as `inputs` say (input_pipeline.TrainFeed), preprocesses it, augments
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
      return self._one_step(state, input_pipeline.prepare(batch, self._preprocess, augment, key))

    if self._members:  # A population trains on the devices' split: a block of indices.
      fed_step = jax.vmap(fed_step, in_axes=(0, None, {'idx': 1, 'first': None}))
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
    step = jax.vmap(step, in_axes=(0, None))
  return jax.jit(step, out_shardings=parallel.replicated(mesh))


def evaluate(eval_step: Callable[..., Any], state: TrainState, split: input_pipeline.Split,
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


def _mean(metrics: dict[str, Any]) -> dict[str, float]:
  """A population's metrics as the mean over its members; a single model's as they are."""
  return {k: float(np.mean(v)) for k, v in metrics.items()}


class _StopSignals:
  """Turns SIGINT and SIGTERM into a flag that the loop reads between steps, so it saves first.

  A second signal interrupts at once.
  """
  def __enter__(self):
    self.received = None
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.received:
      raise KeyboardInterrupt
    self.received = signal.Signals(signum).name
    logging.warning('%s received: saving a checkpoint, then stopping', self.received)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  flat = {}

  def visit(prefix, value):
    if isinstance(value, dict):
      for k, v in value.items():
        visit(f'{prefix}{k}.', v)
    elif value is not None:
      flat[prefix[:-1]] = value if isinstance(value, (int, float, str, bool)) else str(value)

  visit('', config.to_dict())
  return flat


def _track_best(meta: dict[str, Any], config: ml_collections.ConfigDict, value: float, step: int,
                epoch: int) -> bool:
  """Updates the best value and patience count in `meta`; returns whether `value` is a new best.

  Equal values do not count as improvements: the first best epoch is kept, as in Keras.
  """
  best = meta['best_value']
  improved = best is None or (value > best if config.best_mode == 'max' else value < best)
  if improved:
    meta.update(best_value=value, best_step=step, best_epoch=epoch, epochs_since_best=0)
  else:
    meta['epochs_since_best'] += 1
  if config.early_stopping_patience and meta['epochs_since_best'] >= config.early_stopping_patience:
    meta['stopped_early'] = True
    logging.info(
        'early stopping at epoch %d: %s has not improved for %d epochs '
        '(best %.5g at epoch %d)', epoch, config.best_metric, meta['epochs_since_best'],
        meta['best_value'], meta['best_epoch'])
  return improved


class _Progress:
  """Turns each call's per-step metrics (one transfer) into epoch means and logging windows.

  Args:
    steps_per_epoch: steps of an epoch.
    total_steps: steps of the run.
    log_every_steps: training scalars go to TensorBoard at multiples of this.
  """
  def __init__(self, steps_per_epoch: int, total_steps: int, log_every_steps: int):
    self._spe, self._total, self._log_every = steps_per_epoch, total_steps, log_every_steps
    self._epoch: dict[str, np.ndarray] = {}
    self._window: dict[str, np.ndarray] = {}
    self.epochs: list[dict[str, Any]] = []  # Finished epochs' training means, not yet recorded.
    self.windows: list[tuple[int, dict[str, float]]] = []  # (step, means) to log.

  @staticmethod
  def _means(sums: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(v[0] / v[1]) for k, v in sums.items()}

  def add(self, first_step: int, steps: int, metrics: Any) -> tuple[int, float, int] | None:
    """Adds the `steps` steps after `first_step`.

    `metrics` are a call's CLU Averages, stacked over its steps (a call of one
    step is a stack of one), for a population with a member axis after it:
    the population's mean is recorded (every member counts as many examples).

    Returns:
      (step, loss, member) of the first non-finite loss, else None.
    """
    metrics = jax.device_get(metrics)
    fields = {
        k: (np.asarray(v.total,
                       np.float64).reshape(steps, -1), np.asarray(v.count, np.float64).reshape(
                           steps, -1)) for k, v in vars(metrics).items() if not k.startswith('_')
    }
    losses = fields['loss'][0] / np.maximum(fields['loss'][1], 1)
    bad = np.argwhere(~np.isfinite(losses))
    if bad.size:
      i, k = bad[0]
      return first_step + int(i) + 1, float(losses[i, k]), int(k)
    fields = {k: (t.sum(1), c.sum(1)) for k, (t, c) in fields.items()}
    n = steps
    cuts = [
        i + 1 for i in range(n) if (first_step + i + 1) % self._spe == 0 or (first_step + i + 1) %
        self._log_every == 0 or first_step + i + 1 == self._total
    ]
    start = 0
    for cut in sorted({*cuts, n}):
      part = {
          k: np.array([t[start:cut].sum(), c[start:cut].sum()], np.float64)
          for k, (t, c) in fields.items()
      }
      for acc in (self._epoch, self._window):
        for k, v in part.items():
          acc[k] = acc.get(k, 0) + v
      step = first_step + cut
      if step % self._log_every == 0 or step == self._total:
        self.windows.append((step, self._means(self._window)))
        self._window = {}
      if step % self._spe == 0 or step == self._total:
        self.epochs.append({
            'epoch': -(-step // self._spe), 'step': step,
            **{f'train_{k}': v for k, v in self._means(self._epoch).items()}
        })
        self._epoch = {}
      start = cut
    return None


def lr_sweep_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """The LR range test's exponential sweep (the course's 1e-8 * 10 ** (epoch / 20)).

  lr_finder_start * 10 ** (epoch / lr_finder_epochs_per_decade), epoch fractional.
  """
  steps_per_decade = steps_per_epoch * config.lr_finder_epochs_per_decade
  return lambda step: config.lr_finder_start * 10.0**(step / steps_per_decade)


def _lr_range_result(history: list[dict[str, Any]], schedule: optax.Schedule, steps_per_epoch: int,
                     workdir: str) -> dict[str, Any]:
  """The LR range test's curve, its suggested rate and plot (plots/lr_finder.png).

  Each epoch's mean training loss is paired with the rate at the epoch's start.
  The suggestion is a tenth of the rate at the lowest loss: the loss still falls
  steadily there, well before the rates at which it turns up (as in fastai).
  """
  rates = [float(schedule(h['step'] - steps_per_epoch)) for h in history]
  losses = [h['train_loss'] for h in history]
  finite = [i for i, loss in enumerate(losses) if math.isfinite(loss)]
  if not finite:
    return {'lr_finder': {'learning_rates': rates, 'losses': losses}, 'suggested_lr': None}
  lowest = min(finite, key=lambda i: losses[i])
  suggested = rates[lowest] / 10
  if jax.process_index() == 0:
    plots.lines(
        rates, {'training loss (epoch mean)': losses},
        os.path.join(workdir, 'plots', 'lr_finder.png'), xlabel='learning rate', ylabel='loss',
        title=f'LR range test: lowest loss at {rates[lowest]:.2g}, '
        f'suggested {suggested:.2g}', logx=True, logy=True, vline=suggested)
  return {
      'lr_finder': {'learning_rates': rates, 'losses': losses}, 'suggested_lr': suggested,
      'lowest_loss_lr': rates[lowest]
  }


def _with_ema(run_eval: Callable[..., dict[str, float]], state: TrainState,
              split: input_pipeline.Split, prefix: str, **kwargs: Any) -> dict[str, float]:
  """`run_eval` of the params, then of their moving average under prefix + 'ema_'."""
  averaged = state.replace(params=state.ema_params)
  return {
      **run_eval(state, split, prefix=prefix, **kwargs),
      **run_eval(averaged, split, prefix=prefix + 'ema_', **kwargs)
  }


class _Profiler:
  """A jax.profiler trace of `steps` steps into logdir/plugins/profile (TensorBoard's profile tab).

  It starts after the first call, so the trace holds steps and not their compilation.
  """
  def __init__(self, steps: int, logdir: str):
    self.steps, self.logdir, self.started_at = steps, logdir, None

  def after_call(self, step: int, state: TrainState) -> None:
    if not self.steps:
      return
    if self.started_at is None:
      jax.block_until_ready(state)
      jax.profiler.start_trace(self.logdir)
      self.started_at = step
    elif step - self.started_at >= self.steps:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      logging.info('profile of steps %d-%d written to %s/plugins/profile', self.started_at + 1,
                   step, self.logdir)
      self.steps = 0

  def close(self) -> None:
    if self.started_at is not None and self.steps:
      jax.profiler.stop_trace()


def _due(first: int, last: int, period: int, total: int) -> bool:
  """Whether it is time: a call that ran steps (first, last] crossed a multiple of `period`, or ended the run."""
  return last // period > first // period or last == total


@dataclasses.dataclass
class _Engine:
  """What a run sets up once: its step counts, schedule, initial state and compiled steps."""
  steps_per_epoch: int
  total_steps: int
  per_call: int  # Steps per compiled call.
  schedule: optax.Schedule
  state: TrainState  # At step 0.
  train_steps: TrainSteps
  evaluate: Callable[..., dict[str, Any]]  # (state, split, prefix, max_batches=None).
  train_sharding: jax.sharding.Sharding
  augmentation: input_pipeline.Augmentation
  eval_step: Callable[..., Any]  # The jitted eval step that `evaluate` calls.


def _set_up(config: ml_collections.ConfigDict, model: nn.Module, task: Task,
            train: input_pipeline.Split, rng_streams: Sequence[str],
            augmentation: input_pipeline.Augmentation, schedule: optax.Schedule | None) -> _Engine:
  """Steps, schedule, the state at step 0 and the compiled train and eval steps."""
  if (len(augmentation.train) > 1 or train.buckets) and config.steps_per_execution != 1:
    raise UserError('config.steps_per_execution must be 1 here: this experiment changes the '
                    'batch shape from step to step, and only equal batches can be stacked')
  mesh = parallel.make_mesh()
  steps_per_epoch, total_steps = epochs_to_steps(config, train.num_examples)
  per_call = steps_per_call(config, steps_per_epoch)
  accum = config.grad_accum_steps
  if steps_per_epoch % accum:
    raise UserError(f'config.grad_accum_steps={accum} must divide the {steps_per_epoch} steps '
                    'of an epoch')
  if schedule is None:  # The optimizer's schedule counts updates: one per `accum` steps.
    by_update = learning_rate_schedule(config, total_steps // accum, steps_per_epoch / accum)
    schedule = by_update if accum == 1 else lambda step: by_update(step // accum)
  else:
    by_update = schedule
  example = input_pipeline.model_spec(train, augmentation.train[0])
  state = create_train_state(config, model, example['x'].shape, example['x'].dtype,
                             create_optimizer(config, by_update), parallel.replicated(mesh),
                             rng_streams)
  population = members(state)
  one = member(state, 0) if population else state
  logging.info(
      'model: %s params%s; %d steps per epoch, %d steps, %d per call; %d devices, %d '
      'processes; training data %s\n%s', f'{models.count_params(one.params):,}',
      f' x {population} seeds' if population else '', steps_per_epoch, total_steps, per_call,
      parallel.device_count(), parallel.process_count(),
      'on the devices' if train.stream is None else 'streamed through tf.data',
      parameter_overview.get_parameter_overview(one.params, include_stats=False))
  # The task's value names, found by tracing once without computing.
  batch = {k: jax.ShapeDtypeStruct((1, *s.shape), s.dtype) for k, s in example.items()}
  names = sorted(
      jax.eval_shape(
          lambda s, b: task(
              s.apply_fn({'params': s.params, **s.model_state}, b['x'], train=False, rngs=_rngs(
                  s.rng, rng_streams)), b), one, batch))
  measured = [f'val_{n}' for n in names]
  measured += [f'val_ema_{n}' for n in names] if config.ema_decay else []
  if config.best_metric and config.best_metric not in measured:
    raise UserError(f'config.best_metric={config.best_metric!r} is not measured; '
                    f'choose one of {measured}')
  dtype = COMPUTE_DTYPES[config.compute_dtype]
  train_steps = TrainSteps(task, metrics_collection(names), mesh, rng_streams, train.preprocess,
                           augmentation, per_call, dtype, config.ema_decay, population)
  eval_step = jit_eval_step(task, names, mesh, rng_streams, dtype, population)
  run_eval = functools.partial(evaluate, eval_step, batch_size=config.eval_batch_size,
                               augment=augmentation.eval)
  if config.ema_decay:  # The average's metrics beside the params': val_ema_*, test_ema_*.
    run_eval = functools.partial(_with_ema, run_eval)
  train_sharding = (parallel.stacked_batch_sharding(mesh)
                    if per_call > 1 else parallel.batch_sharding(mesh))
  return _Engine(steps_per_epoch, total_steps, per_call, schedule, state, train_steps, run_eval,
                 train_sharding, augmentation, eval_step)


class _Loop:
  """The training loop and the bookkeeping it carries from call to call.

  `meta` (history, best value and step, patience, stopped_early) is saved in
  every checkpoint beside the state, so a resumed run carries on from it.

  Args:
    config: the run's config.
    engine: from `_set_up`.
    ckpt: the run's checkpoints.
    writer: its TensorBoard events.
    meta: the bookkeeping, fresh or restored.
    saved_step: the step of the latest checkpoint, None if there is none.
    sweep: an LR range test: a non-finite loss ends the run instead of failing it.
  """
  def __init__(self, config: ml_collections.ConfigDict, engine: _Engine,
               ckpt: checkpoints.Checkpoints, writer: summary.EventWriter, meta: dict[str, Any],
               saved_step: int | None, sweep: bool):
    self.config, self.engine, self.ckpt, self.writer = config, engine, ckpt, writer
    self.meta, self.saved_step, self.sweep = meta, saved_step, sweep
    self.progress = _Progress(engine.steps_per_epoch, engine.total_steps, config.log_every_steps)
    self.last_line = 0.0  # When the terminal got its last epoch line.
    self.started, self.start_step = time.time(), 0  # For the steps/s of those lines.

  def run(self, state: TrainState, train: input_pipeline.Split,
          val: input_pipeline.Split) -> TrainState:
    """Trains from state.step to the end (or an early stop); returns the last state."""
    config, engine = self.config, self.engine
    every_eval = config.eval_every_epochs * engine.steps_per_epoch
    every_save = config.checkpoint_every_epochs * engine.steps_per_epoch
    step = current_step(state)
    feed = input_pipeline.TrainFeed(
        train, config.batch_size, seed=config.seed, shuffle_buffer=config.get('shuffle_buffer', 0),
        start_step=step, stack=engine.per_call if engine.per_call > 1 else 0, members=config.get(
            'num_seeds', 1), shuffle=config.get('shuffle', True))
    self.started, self.start_step = time.time(), step
    profiler = _Profiler(config.profile_steps, os.path.dirname(self.ckpt.directory))
    # The previous call's metrics: read one call late, so that the host never waits on
    # the steps it has just dispatched.
    pending = None
    with _StopSignals() as signals, contextlib.closing(profiler):
      while step < engine.total_steps and not self.meta['stopped_early']:
        # Step: dispatch the next call.
        first, count = step, min(engine.per_call, engine.total_steps - step)
        inputs = feed.next(count, engine.train_sharding)
        state, metrics = engine.train_steps(state, feed.data, inputs,
                                            engine.augmentation.index(step), count)
        step += count
        profiler.after_call(step, state)
        if pending and not self.absorb(*pending):
          break
        pending = (first, count, metrics)
        evaluate_now = _due(first, step, every_eval, engine.total_steps)
        save_now = _due(first, step, every_save, engine.total_steps)
        if not (evaluate_now or save_now or signals.received):
          continue
        # Log: this call's metrics, now that the evaluation or checkpoint needs them.
        if not self.absorb(*pending):
          break
        pending = None
        # Evaluate.
        if evaluate_now:
          save_now = self.evaluate(state, step, val) or save_now
        # Checkpoint.
        if save_now or signals.received:
          self.save(state, step)
        # Stop on a signal, saved.
        if signals.received:
          raise Interrupted(f'{signals.received} at step {step}: checkpoint saved in '
                            f'{self.ckpt.directory}; run the same command again to resume')
      if pending:
        self.absorb(*pending)
    return state

  def absorb(self, first: int, steps: int, metrics: Any) -> bool:
    """The host's share of a finished call: NaN check, TensorBoard, history.

    Returns:
      False where a non-finite loss ends an LR range test.

    Raises:
      NonFiniteLossError: a non-finite loss in a training run.
    """
    bad = self.progress.add(first, steps, metrics)
    if bad and self.sweep:
      self.meta['stopped_early'] = True
      logging.info('LR range test: loss is %s at step %d; the sweep ends there', bad[1], bad[0])
      return False
    if bad:
      kept = (f'the last good checkpoint (step {self.saved_step}) is kept in '
              f'{self.ckpt.directory}'
              if self.saved_step is not None else 'no checkpoint was saved yet')
      which = (f' (the model of seed {self.config.seed + bad[2]})' if self.config.get(
          'num_seeds', 1) > 1 else '')
      raise NonFiniteLossError(f'loss is {bad[1]} at step {bad[0]}{which}; training stopped, '
                               f'{kept}. Lower config.learning_rate or check the inputs')
    for at, means in self.progress.windows:
      self.writer.write_scalars(
          at, {
              'learning_rate': float(self.engine.schedule(at - 1)),
              **{f'train_{k}': v for k, v in means.items()}
          })
    self.progress.windows.clear()
    self.meta['history'].extend(self.progress.epochs)
    self.progress.epochs.clear()
    return True

  def evaluate(self, state: TrainState, step: int, val: input_pipeline.Split) -> bool:
    """Evaluates `val` into the epoch's record; returns whether it is a new best (to save)."""
    config = self.config
    per_model = self.engine.evaluate(state, val, prefix='val_', max_batches=config.validation_steps)
    val_metrics = _mean(per_model)  # A population is logged and ranked by its mean.
    if config.get('num_seeds', 1) > 1:
      self.meta['val_per_seed'] = {k: v.tolist() for k, v in per_model.items()}
    self.writer.write_scalars(step, val_metrics)
    record = self.meta['history'][-1]
    record.update(val_metrics)
    improved = bool(config.best_metric) and _track_best(
        self.meta, config, val_metrics[config.best_metric], step, record['epoch'])
    if time.time() - self.last_line >= config.log_every_seconds or step == self.engine.total_steps:
      self.last_line = time.time()
      rate = (step - self.start_step) / (self.last_line - self.started)
      logging.info(
          'epoch %d (step %d, %.0f steps/s): %s', record['epoch'], step, rate,
          ', '.join(f'{k}={v:.5g}' for k, v in record.items() if k not in ('epoch', 'step')))
    return improved or self.meta['stopped_early']

  def save(self, state: TrainState, step: int) -> None:
    if self.saved_step != step:
      self.ckpt.save(step, state, self.meta, best_step=self.meta['best_step'])
      self.saved_step = step


def _compile(config: ml_collections.ConfigDict, engine: _Engine, train: input_pipeline.Split,
             val: input_pipeline.Split, test: input_pipeline.Split | None) -> None:
  """lib.aot: compiles every program `fit` would run, on abstract inputs; raises aot.Compiled.

  Each split on the devices is held whole by every device while any program
  runs, so each program's need is its peak plus the splits it does not take.
  """
  splits = {id(s): s for s in (train, val, test) if s is not None}
  if any(s.stream is not None for s in splits.values()):
    raise UserError('--compile_for builds runs whose splits live on the devices; this one '
                    'streams a split through tf.data, which it does not compile yet')
  held = {k: aot.nbytes(input_pipeline.on_devices(s)) for k, s in splits.items()}
  others = lambda split: sum(held.values()) - held[id(split)]

  # Training: each augmentation's call, and one step alone for the per-step figures.
  feed = input_pipeline.TrainFeed(train, config.batch_size, seed=config.seed, shuffle_buffer=0,
                                  stack=engine.per_call if engine.per_call > 1 else 0,
                                  members=config.get('num_seeds', 1))
  inputs = feed.next(engine.per_call, engine.train_sharding)
  augmentations = len(engine.augmentation.train)
  for which in range(augmentations):
    fn, shape = engine.train_steps.jitted(which), ''
    if augmentations > 1:
      shape = ', x ' + 'x'.join(
          map(str,
              input_pipeline.model_spec(train, engine.augmentation.train[which])['x'].shape))
    per_call = engine.per_call
    steps = engine.total_steps // augmentations
    aot.compile(f'train: {per_call} step{"s" * (per_call > 1)} a call{shape}', fn, engine.state,
                feed.data, inputs, per_call, resident_bytes=others(train),
                calls=-(-steps // per_call), steps=per_call, data_bytes=held[id(train)])
    if per_call > 1:  # XLA counts a scan's body once: one step's FLOPs come from one step.
      aot.compile(f'train: 1 step (its cost){shape}', fn, engine.state, feed.data, inputs, 1,
                  resident_bytes=others(train), calls=steps, steps=1, data_bytes=held[id(train)])

  # Evaluation: every `eval_every_epochs` on val (params, and their average with ema_decay),
  # once on test; each batch gathered and prepared by one program, evaluated by another.
  epochs = config.num_epochs
  passes = {
      id(val): (epochs // config.eval_every_epochs + (epochs % config.eval_every_epochs > 0)) *
               (1 + bool(config.ema_decay))
  }
  if test is not None:
    passes[id(test)] = passes.get(id(test), 0) + 1 + bool(config.ema_decay)
  for key, count in passes.items():
    split = splits[key]
    name = 'val' if split is val else 'test'
    name = 'val and test' if split is val and test is val else name
    batches = input_pipeline.num_eval_batches(split, config.eval_batch_size,
                                              config.validation_steps if split is val else None)
    get, args, batch = input_pipeline.eval_batch_program(split, config.eval_batch_size,
                                                         engine.augmentation.eval)
    calls = count * batches
    aot.compile(f'{name}: batch of {config.eval_batch_size} prepared', get, *args,
                resident_bytes=others(split), calls=calls, data_bytes=held[key])
    aot.compile(f'{name}: evaluation step', engine.eval_step, engine.state, batch,
                resident_bytes=sum(held.values()), calls=calls)
  aot.trained(engine.state)


def _finish(config: ml_collections.ConfigDict, engine: _Engine, ckpt: checkpoints.Checkpoints,
            meta: dict[str, Any], state: TrainState, val: input_pipeline.Split,
            test: input_pipeline.Split | None) -> tuple[TrainState, dict[str, float]]:
  """The best weights if config.restore_best asks, and the final val_* and test_* metrics.

  A population's metrics are arrays of its members' values.
  """
  final_step = current_step(state)
  restore = config.restore_best and meta['best_step'] not in (None, final_step)
  if restore:
    state, _ = ckpt.restore(meta['best_step'], state)
    logging.info('restored the best weights: epoch %d, %s=%.5g', meta['best_epoch'],
                 config.best_metric, meta['best_value'])
  final = {}
  evaluated = [h for h in meta['history'] if any(k.startswith('val_') for k in h)]
  if 'val_per_seed' in meta:  # A population's last evaluation, model by model.
    final.update({k: np.asarray(v) for k, v in meta['val_per_seed'].items()})
  elif evaluated:
    final.update({k: v for k, v in evaluated[-1].items() if k.startswith('val_')})
  if restore:
    final.update(engine.evaluate(state, val, prefix='val_', max_batches=config.validation_steps))
  if test is not None:
    final.update(engine.evaluate(state, test, prefix='test_'))
  return state, final


def _train(config: ml_collections.ConfigDict, workdir: str, *, model: nn.Module, task: Task,
           train: input_pipeline.Split, val: input_pipeline.Split, test: input_pipeline.Split |
           None, rng_streams: Sequence[str], augment: input_pipeline.Augment |
           input_pipeline.Augmentation | None, schedule: optax.Schedule | None = None,
           sweep: bool = False) -> tuple[TrainState, dict[str, Any]]:
  """`fit`'s engine; `schedule` replaces the config's, `sweep` makes a NaN end the run."""
  # Set up: steps, the state at step 0, the compiled steps.
  check_config(config)
  engine = _set_up(config, model, task, train, rng_streams, input_pipeline.augmentation(augment),
                   schedule)
  if aot.active():  # --compile_for: the run's programs compiled for the target; none runs.
    _compile(config, engine, train, val, test)

  # Restore the latest checkpoint, if any.
  ckpt = checkpoints.Checkpoints(workdir, config.keep_checkpoints)
  meta = {
      'history': [], 'best_value': None, 'best_step': None, 'best_epoch': None,
      'epochs_since_best': 0, 'stopped_early': False
  }
  state, saved_step = engine.state, None
  restored = ckpt.restore_latest(state)
  if restored is not None:
    saved_step, state, meta = restored
    logging.info('resumed from %s at step %d', ckpt.directory, saved_step)
  writer = summary.EventWriter(workdir, enabled=jax.process_index() == 0)
  if saved_step is None:
    writer.write_hparams(_flat_hparams(config))

  try:
    # The loop: step, log, evaluate, checkpoint, stop.
    loop = _Loop(config, engine, ckpt, writer, meta, saved_step, sweep)
    state = loop.run(state, train, val)
    final_step = current_step(state)
    # Finish: the best weights if asked, the final metrics.
    state, per_model = _finish(config, engine, ckpt, meta, state, val, test)
    final = _mean(per_model)
    writer.write_scalars(final_step, {k: v for k, v in final.items() if k.startswith('test_')})
  finally:
    ckpt.close()
    writer.close()

  population = members(state)
  if population:  # The experiment carries on with the first model (config.seed)'s weights.
    state = member(state, 0)
  results = {
      'steps': final_step,
      'steps_per_epoch': engine.steps_per_epoch,
      'epochs': len(meta['history']),
      'params': models.count_params(state.params),
      'history': meta['history'],
      # Compilations of the train step in this process: one per distinct batch shape.
      'train_step_compiles': engine.train_steps.compiles(),
      'stopped_early': meta['stopped_early'],
      'best_epoch': meta['best_epoch'],
      'restored_best': bool(config.restore_best and meta['best_step'] is not None),
      **final,
  }
  if config.best_metric:
    results[f'best_{config.best_metric}'] = meta['best_value']
  if population:  # The metrics above are the means over the models; here each and the spread.
    results['seeds'] = {
        'seed': list(range(config.seed, config.seed + population)),
        **{k: np.asarray(v).tolist() for k, v in per_model.items()}
    }
    results['std'] = {k: float(np.std(v, ddof=1)) for k, v in per_model.items()}
  return state, results


def lr_range_test(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    model: nn.Module,
    task: Task,
    train: input_pipeline.Split,
    val: input_pipeline.Split,
    test: input_pipeline.Split | None = None,
    rng_streams: Sequence[str] = (),
    augment: input_pipeline.Augment | input_pipeline.Augmentation | None = None,
) -> tuple[TrainState, dict[str, Any]]:
  """The LR range test (the notes' "schedule to find the rate") on the same engine.

  Trains with `lr_sweep_schedule` in place of the config's schedule, without
  early stopping or a best checkpoint, until the loss turns non-finite or
  config.num_epochs end; adds the loss-vs-rate curve, `suggested_lr` and
  plots/lr_finder.png to the results. Arguments as `fit`'s.
  """
  steps_per_epoch, _ = epochs_to_steps(config, train.num_examples)
  schedule = lr_sweep_schedule(config, steps_per_epoch)
  sweep = copy.deepcopy(config)
  sweep.update(early_stopping_patience=0, restore_best=False, best_metric='')
  state, results = _train(sweep, workdir, model=model, task=task, train=train, val=val, test=test,
                          rng_streams=rng_streams, augment=augment, schedule=schedule, sweep=True)
  results.update(_lr_range_result(results['history'], schedule, steps_per_epoch, workdir))
  return state, results


def fit(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    model: nn.Module,
    task: Task,
    train: input_pipeline.Split,
    val: input_pipeline.Split,
    test: input_pipeline.Split | None = None,
    rng_streams: Sequence[str] = (),
    augment: input_pipeline.Augment | input_pipeline.Augmentation | None = None,
) -> tuple[TrainState, dict[str, Any]]:
  """Trains `model` on `train`, evaluating on `val` every config.eval_every_epochs and on `test` at the end.

  With config.lr_finder, runs `lr_range_test` instead.

  Args:
    config: the run's config (the engine fields of configs/common.py).
    workdir: where TensorBoard events and checkpoints go; a run resumes from it.
    model: the Flax module; called as model.apply(variables, x, train=..., rngs=...).
    task: per-example loss and metrics, e.g. lib.tasks.classification.
    train: the training split.
    val: evaluated as 'val_*'.
    test: evaluated once at the end, as 'test_*'; None to skip.
    rng_streams: random streams the model uses besides 'params'.
    augment: random augmentation in the step (input_pipeline.Augment, used for
      training and, with a fixed key per example, for evaluation; or an
      input_pipeline.Augmentation). It may change the shape of 'x' (e.g.
      canvases of a few sizes); the train step compiles once per shape.

  Returns:
    The final state (the best one with config.restore_best) and a summary:
    steps, epochs, history (per-epoch train metrics, and val metrics where
    evaluated), best epoch and value, whether it stopped early, and the final
    val_* and test_* metrics.
  """
  run = lr_range_test if config.lr_finder else _train
  return run(config, workdir, model=model, task=task, train=train, val=val, test=test,
             rng_streams=rng_streams, augment=augment)
