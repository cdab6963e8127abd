"""The training engine: state, optimizer, the jitted train and eval steps, and the fit loop.

Every experiment that learns from batches trains here. `fit` resumes from the
workdir's latest checkpoint, evaluates every example of the validation split
each epoch, keeps the best checkpoint, stops early on a stalled metric, stops
on a NaN or inf loss, and saves before it exits on SIGINT or SIGTERM.
"""
from collections.abc import Callable, Iterator, Sequence
import functools
import math
import os
import signal
import threading
from typing import Any

from absl import logging
from clu import metric_writers
from clu import metrics as clu_metrics
from clu import periodic_actions
import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lib import checkpoints
from lib import input_pipeline
from lib import models
from lib import parallel
from lib import plots
from lib.errors import Interrupted, NonFiniteLossError, UserError

# Maps (model outputs, batch) to per-example values; 'loss' is minimized. See lib/tasks.py.
Task = Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]]

OPTIMIZERS = ('sgd', 'adam')
SCHEDULES = ('constant', 'cosine', 'warmup_cosine')


class TrainState(train_state.TrainState):
  """Params, optimizer state and step (from Flax), plus:

  Attributes:
    model_state: the model's other variable collections, e.g. {'batch_stats': ...}; {} if none.
    rng: the run's base key; step s uses fold_in(rng, s), so a resumed run draws the same keys.
  """
  model_state: Any
  rng: jax.Array


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
  for field in ('num_epochs', 'log_every_steps', 'checkpoint_every_epochs', 'keep_checkpoints',
                'steps_per_execution'):
    if config[field] < 1:
      raise UserError(f'config.{field}={config[field]} must be at least 1')
  for field in ('steps_per_epoch', 'validation_steps'):
    if config[field] is not None and config[field] < 1:
      raise UserError(f'config.{field}={config[field]} must be at least 1, or None for a whole split')
  if config.early_stopping_patience < 0:
    raise UserError('config.early_stopping_patience must be >= 0 (0 never stops early)')
  if (config.restore_best or config.early_stopping_patience) and not config.best_metric:
    raise UserError('config.restore_best and config.early_stopping_patience need config.best_metric')
  parallel.local_batch_size(config.batch_size, 'batch_size')
  parallel.local_batch_size(config.eval_batch_size, 'eval_batch_size')


def epochs_to_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> tuple[int, int]:
  """Turns epochs into steps, with Keras' meaning of steps_per_epoch.

  Args:
    config: `batch_size`, `num_epochs`, `steps_per_epoch` (None: one pass
      over the training split, num_train_examples // batch_size; the last
      partial batch is dropped, a different one each pass) and
      `steps_per_execution` (steps_per_epoch is rounded down to a multiple of it).
    num_train_examples: examples in the training split.

  Returns:
    (steps_per_epoch, total_steps).
  """
  steps_per_epoch = config.steps_per_epoch or num_train_examples // config.batch_size
  if steps_per_epoch < 1:
    raise UserError(f'config.batch_size={config.batch_size} is larger than the '
                    f'{num_train_examples} training examples')
  if steps_per_epoch < config.steps_per_execution:
    raise UserError(f'config.steps_per_execution={config.steps_per_execution} is more than '
                    f'the {steps_per_epoch} steps of an epoch')
  steps_per_epoch -= steps_per_epoch % config.steps_per_execution
  return steps_per_epoch, config.num_epochs * steps_per_epoch


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int,
                           steps_per_epoch: int) -> optax.Schedule:
  """`config.lr_schedule` over the run: constant, cosine decay to 0, or linear warmup then cosine.

  With config.lr_finder, the range test's exponential sweep instead:
  lr_finder_start * 10 ** (epoch / lr_finder_epochs_per_decade), epoch fractional.
  """
  if config.lr_finder:
    steps_per_decade = steps_per_epoch * config.lr_finder_epochs_per_decade
    return lambda step: config.lr_finder_start * 10.0 ** (step / steps_per_decade)
  lr = config.learning_rate
  if config.lr_schedule == 'constant':
    return optax.constant_schedule(lr)
  if config.lr_schedule == 'cosine':
    return optax.cosine_decay_schedule(lr, total_steps)
  warmup = int(config.warmup_epochs * steps_per_epoch)
  return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total_steps)


def create_optimizer(config: ml_collections.ConfigDict,
                     schedule: optax.Schedule) -> optax.GradientTransformation:
  """`config.optimizer` ('sgd' with `config.momentum`, or 'adam') following `schedule`."""
  if config.optimizer == 'sgd':
    return optax.sgd(schedule, momentum=config.momentum or None)
  return optax.adam(schedule)


def create_train_state(config: ml_collections.ConfigDict, model: nn.Module,
                       input_shape: Sequence[int], input_dtype: Any,
                       tx: optax.GradientTransformation, sharding: jax.sharding.Sharding,
                       rng_streams: Sequence[str] = ()) -> TrainState:
  """Initializes params from `config.seed`, replicated over the mesh.

  Args:
    config: the run's config (`seed`).
    model: the Flax module.
    input_shape: shape of one example's model input, without the batch axis.
    input_dtype: its dtype.
    tx: the optimizer.
    sharding: where the state lives (replicated).
    rng_streams: the model's random streams besides 'params' (e.g. 'dropout').

  Returns:
    The TrainState at step 0.
  """
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))

  def init():
    rngs = dict(zip(('params', *rng_streams), jax.random.split(init_rng, 1 + len(rng_streams))))
    variables = model.init(rngs, jnp.zeros((1, *input_shape), input_dtype), train=False)
    model_state = {k: v for k, v in variables.items() if k != 'params'}
    return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                             model_state=model_state, rng=state_rng)

  return jax.jit(init, out_shardings=sharding)()


def metrics_collection(names: Sequence[str]) -> type[clu_metrics.Collection]:
  """A CLU collection that averages each named per-example value (masked where asked)."""
  return clu_metrics.Collection.create(
      **{name: clu_metrics.Average.from_output(name) for name in names})


def _rngs(key: jax.Array, streams: Sequence[str]) -> dict[str, jax.Array]:
  return dict(zip(streams, jax.random.split(key, len(streams)))) if streams else {}


def make_train_step(task: Task, collection: type[clu_metrics.Collection],
                    rng_streams: Sequence[str] = ()) -> Callable[..., Any]:
  """`train_step(state, batch) -> (state, metrics)`: one gradient step on the mean loss."""

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    rngs = _rngs(jax.random.fold_in(state.rng, state.step), rng_streams)

    def loss_fn(params):
      outputs, model_state = state.apply_fn(
          {'params': params, **state.model_state}, batch['x'], train=True, rngs=rngs,
          mutable=list(state.model_state))
      values = task(outputs, batch)
      return jnp.mean(values['loss']), (values, model_state)

    (_, (values, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, model_state=model_state)
    return state, collection.single_from_model_output(**values)

  return train_step


def make_eval_step(task: Task, collection: type[clu_metrics.Collection],
                   rng_streams: Sequence[str] = ()) -> Callable[..., Any]:
  """`eval_step(state, batch) -> metrics`: the task's values in evaluation mode, padding masked."""

  def eval_step(state: TrainState, batch: dict[str, jax.Array]):
    # A fixed key, so evaluating the same weights twice gives the same numbers.
    rngs = _rngs(jax.random.fold_in(state.rng, 2**31 - 1), rng_streams)
    outputs = state.apply_fn({'params': state.params, **state.model_state}, batch['x'],
                             train=False, rngs=rngs)
    return collection.single_from_model_output(**task(outputs, batch), mask=batch['mask'])

  return eval_step


def jit_steps(task: Task, names: Sequence[str], mesh: jax.sharding.Mesh,
              rng_streams: Sequence[str] = (),
              steps_per_execution: int = 1) -> tuple[Callable[..., Any], Callable[..., Any]]:
  """The train and eval steps as `fit` runs them: compiled once, batch-sharded, state donated.

  With steps_per_execution > 1 the train step takes that many batches stacked
  on a leading axis and runs them with `lax.scan`, returning each step's
  metrics stacked the same way; with 1 it is the plain step on one batch.

  Args:
    task: per-example loss and metrics.
    names: the task's value names (the keys of its dict).
    mesh: the device mesh.
    rng_streams: the model's random streams besides 'params'.
    steps_per_execution: the length of the leading axis of steps.

  Returns:
    (train_steps, eval_step).
  """
  collection = metrics_collection(names)
  replicated, batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  one_step = make_train_step(task, collection, rng_streams)

  if steps_per_execution == 1:
    # The plain step on unstacked batches: a scan, even of one step, ran the MNIST
    # CNN 11x slower on XLA:CPU (886 vs 80 ms), and stacking costs short steps ~15%.
    train_steps = jax.jit(one_step, in_shardings=(replicated, batch),
                          out_shardings=(replicated, replicated), donate_argnums=0)
  else:
    train_steps = jax.jit(lambda state, batches: jax.lax.scan(one_step, state, batches),
                          in_shardings=(replicated, parallel.stacked_batch_sharding(mesh)),
                          out_shardings=(replicated, replicated), donate_argnums=0)
  eval_step = jax.jit(make_eval_step(task, collection, rng_streams),
                      in_shardings=(replicated, batch), out_shardings=replicated)
  return train_steps, eval_step


class EvalBatches:
  """The padded evaluation batches of a split, kept on the devices after the first pass.

  They are the same at every evaluation, so only splits too large to keep
  (over `max_bytes` per process) are read and transferred again each time.
  """

  def __init__(self, split: input_pipeline.Split, batch_size: int,
               sharding: jax.sharding.Sharding, max_batches: int | None = None,
               augment: input_pipeline.Augment | None = None, max_bytes: int = 256 * 2**20):
    self._ds = input_pipeline.eval_dataset(split, batch_size, max_batches, augment)
    self._sharding = sharding
    self._keep = input_pipeline.eval_bytes(split, batch_size, max_batches, augment) <= max_bytes
    self._kept = None

  def __iter__(self) -> Iterator[dict[str, jax.Array]]:
    if self._kept is not None:
      yield from self._kept
      return
    kept = []
    for batch in self._ds.as_numpy_iterator():
      batch = parallel.shard(batch, self._sharding)
      if self._keep:
        kept.append(batch)
      yield batch
    if self._keep:
      self._kept = kept


def evaluate(eval_step: Callable[..., Any], state: TrainState, batches: EvalBatches,
             prefix: str) -> dict[str, float]:
  """Averages the task's values over every evaluation batch, padding masked."""
  total = None
  for batch in batches:
    m = eval_step(state, batch)
    total = m if total is None else total.merge(m)
  return {prefix + k: float(v) for k, v in total.compute().items()}


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


def _merge_on_host(metrics: list[Any], stacked: bool) -> Any:
  """Merges metrics (stacked over steps or not) after one transfer to the host."""
  metrics = jax.device_get(metrics)
  if stacked:  # Every metric here is a CLU Average, whose fields are sums over the steps.
    metrics = [jax.tree.map(lambda x: x.sum(0), m) for m in metrics]
  return functools.reduce(lambda a, b: a.merge(b), metrics)


def _track_best(meta: dict[str, Any], config: ml_collections.ConfigDict, value: float,
                step: int, epoch: int) -> bool:
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
    logging.info('early stopping at epoch %d: %s has not improved for %d epochs '
                 '(best %.5g at epoch %d)', epoch, config.best_metric,
                 meta['epochs_since_best'], meta['best_value'], meta['best_epoch'])
  return improved


def _lr_range_result(history: list[dict[str, Any]], schedule: optax.Schedule,
                     steps_per_epoch: int, workdir: str) -> dict[str, Any]:
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
    plots.lines(rates, {'training loss (epoch mean)': losses},
                os.path.join(workdir, 'plots', 'lr_finder.png'), xlabel='learning rate',
                ylabel='loss', title=f'LR range test: lowest loss at {rates[lowest]:.2g}, '
                f'suggested {suggested:.2g}', logx=True, logy=True, vline=suggested)
  return {'lr_finder': {'learning_rates': rates, 'losses': losses},
          'suggested_lr': suggested, 'lowest_loss_lr': rates[lowest]}


def fit(config: ml_collections.ConfigDict, workdir: str, *, model: nn.Module, task: Task,
        train: input_pipeline.Split, val: input_pipeline.Split,
        test: input_pipeline.Split | None = None, rng_streams: Sequence[str] = (),
        augment: input_pipeline.Augment | None = None,
        batch_augment: input_pipeline.BatchAugment | None = None,
        ) -> tuple[TrainState, dict[str, Any]]:
  """Trains `model` on `train`, evaluating on `val` each epoch and on `test` at the end.

  Args:
    config: the run's config (the engine fields of configs/common.py).
    workdir: where TensorBoard events and checkpoints go; a run resumes from it.
    model: the Flax module; called as model.apply(variables, x, train=..., rngs=...).
    task: per-example loss and metrics, e.g. lib.tasks.classification.
    train: the training split.
    val: evaluated every epoch; its metrics are named 'val_*'.
    test: evaluated once at the end, as 'test_*'; None to skip.
    rng_streams: random streams the model uses besides 'params'.
    augment: random per-example augmentation in the input pipeline: new each
      training pass, fixed for evaluation (input_pipeline.Augment).
    batch_augment: per-batch augmentation of training batches, after `augment`
      (input_pipeline.BatchAugment). It may change the batch's shape (e.g.
      images of a few sizes); the train step then compiles once per shape.

  Returns:
    The final state (the best one with config.restore_best) and a summary:
    steps, epochs, history (per-epoch train and val metrics), best epoch and
    value, whether it stopped early, and the final val_* and test_* metrics.
  """
  check_config(config)
  if (batch_augment is not None or train.buckets) and config.steps_per_execution != 1:
    raise UserError('config.steps_per_execution must be 1 here: this experiment changes the '
                    'batch shape from step to step, and only equal batches can be stacked')
  mesh = parallel.make_mesh()
  replicated, batch_sharding = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  local_batch = parallel.local_batch_size(config.batch_size)
  local_eval_batch = parallel.local_batch_size(config.eval_batch_size, 'eval_batch_size')
  steps_per_epoch, total_steps = epochs_to_steps(config, train.num_examples)
  schedule = learning_rate_schedule(config, total_steps, steps_per_epoch)
  x_spec = input_pipeline.element_spec(train, augment)['x']  # The model sees x after augment.
  state = create_train_state(config, model, tuple(x_spec.shape), x_spec.dtype.as_numpy_dtype,
                             create_optimizer(config, schedule), replicated, rng_streams)
  logging.info('model: %s params; %d steps per epoch, %d steps; %d devices; process %d of %d '
               'reads shards %s of the training data', f'{models.count_params(state.params):,}',
               steps_per_epoch, total_steps, jax.device_count(), jax.process_index(),
               jax.process_count(), [s.index for s in train.shards or (train,)])

  # The task's value names, found by tracing once without computing.
  example = {k: jax.ShapeDtypeStruct((1, *s.shape), s.dtype.as_numpy_dtype)
             for k, s in input_pipeline.element_spec(train, augment).items()}
  names = sorted(jax.eval_shape(
      lambda s, b: task(s.apply_fn({'params': s.params, **s.model_state}, b['x'], train=False,
                                   rngs=_rngs(s.rng, rng_streams)), b), state, example))
  if config.best_metric and config.best_metric not in [f'val_{n}' for n in names]:
    raise UserError(f'config.best_metric={config.best_metric!r} is not measured; '
                    f"choose one of {[f'val_{n}' for n in names]}")
  train_steps, eval_step = jit_steps(task, names, mesh, rng_streams, config.steps_per_execution)
  val_batches = EvalBatches(val, local_eval_batch, batch_sharding, config.validation_steps,
                            augment)
  if test is None:
    test_batches = None
  elif test is val and config.validation_steps is None:  # The same batches: keep them once.
    test_batches = val_batches
  else:
    test_batches = EvalBatches(test, local_eval_batch, batch_sharding, augment=augment)
  run_eval = functools.partial(evaluate, eval_step)
  per_call = config.steps_per_execution
  stack = per_call if per_call > 1 else 0
  train_sharding = parallel.stacked_batch_sharding(mesh) if stack else batch_sharding

  ckpt = checkpoints.Checkpoints(workdir, config.keep_checkpoints)
  meta = {'history': [], 'best_value': None, 'best_step': None, 'best_epoch': None,
          'epochs_since_best': 0, 'stopped_early': False}
  latest = None
  restored = ckpt.restore_latest(state)
  if restored is not None:
    latest, state, meta = restored
    logging.info('resumed from %s at step %d', ckpt.directory, latest)
  step = int(state.step)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if step == 0:
    writer.write_hparams(_flat_hparams(config))
  report = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)
  batches: Iterator[dict[str, np.ndarray]] | None = None
  window, epoch_metrics, saved_step = [], None, latest

  def save():
    nonlocal saved_step
    if saved_step != step:
      ckpt.save(step, state, meta, best_step=meta['best_step'])
      saved_step = step

  def check_finite(last_step, loss_totals):
    """Raises at the first non-finite loss among the steps ending at `last_step`.

    A range test (config.lr_finder) ends there instead: the sweep has found
    rates too large to train. Returns whether every loss was finite.
    """
    totals = np.atleast_1d(np.asarray(loss_totals))
    bad = np.flatnonzero(~np.isfinite(totals))
    if bad.size and config.lr_finder:
      meta['stopped_early'] = True
      logging.info('LR range test: loss is %s at step %d; the sweep ends there', totals[bad[0]],
                   last_step - len(totals) + bad[0] + 1)
      return False
    if bad.size:
      raise NonFiniteLossError(
          f'loss is {totals[bad[0]]} at step {last_step - len(totals) + bad[0] + 1}; training '
          f'stopped. The last good checkpoint (step {saved_step}) is kept in {ckpt.directory}. '
          'Lower config.learning_rate or check the inputs')
    return True

  try:
    with _StopSignals() as signals:
      pending = None  # The previous call's losses, checked one call late so the host never
                      # waits on the steps it just dispatched.
      while step < total_steps and not meta['stopped_early']:
        if batches is None:
          batches = input_pipeline.train_batches(
              train, local_batch, seed=config.seed, shuffle_buffer=config.shuffle_buffer,
              start_step=step, stack=stack, augment=augment, batch_augment=batch_augment)
        state, m = train_steps(state, parallel.shard(next(batches), train_sharding))
        step += per_call
        if pending and not check_finite(*pending):
          break
        pending = (step, m.loss.total)
        window.append(m)
        report(step)
        end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
        logs_now = step // config.log_every_steps > (step - per_call) // config.log_every_steps
        if logs_now or end_of_epoch or signals.received:
          if not check_finite(*pending):
            break
          summary = _merge_on_host(window, stacked=bool(stack))
          epoch_metrics = summary if epoch_metrics is None else epoch_metrics.merge(summary)
          window = []
          writer.write_scalars(step, {'learning_rate': float(schedule(step - 1)),
                                      **{f'train_{k}': v for k, v in summary.compute().items()}})
        if end_of_epoch:
          epoch = math.ceil(step / steps_per_epoch)
          val_metrics = run_eval(state, val_batches, prefix='val_')
          writer.write_scalars(step, val_metrics)
          record = {'epoch': epoch, 'step': step, **val_metrics,
                    **{f'train_{k}': float(v) for k, v in epoch_metrics.compute().items()}}
          meta['history'].append(record)
          epoch_metrics = None
          improved = bool(config.best_metric) and not config.lr_finder and _track_best(
              meta, config, val_metrics[config.best_metric], step, epoch)
          logging.info('epoch %d: %s', epoch,
                       ', '.join(f'{k}={v:.5g}' for k, v in record.items() if k not in
                                 ('epoch', 'step')))
          if (improved or epoch % config.checkpoint_every_epochs == 0
              or step == total_steps or meta['stopped_early']):
            save()
        if signals.received:
          save()
          raise Interrupted(f'{signals.received} at step {step}: checkpoint saved in '
                            f'{ckpt.directory}; run the same command again to resume')
    final_step = step
    if config.restore_best and meta['best_step'] not in (None, step):
      state, _ = ckpt.restore(meta['best_step'], state)
      logging.info('restored the best weights: epoch %d, %s=%.5g', meta['best_epoch'],
                   config.best_metric, meta['best_value'])
    final = {}
    if config.lr_finder:
      final.update(_lr_range_result(meta['history'], schedule, steps_per_epoch, workdir))
    if meta['history']:
      final.update({k: v for k, v in meta['history'][-1].items() if k.startswith('val_')})
    if config.restore_best and meta['best_step'] not in (None, final_step):
      final.update(run_eval(state, val_batches, prefix='val_'))
    if test is not None:
      final.update(run_eval(state, test_batches, prefix='test_'))
    writer.write_scalars(final_step, {k: v for k, v in final.items() if k.startswith('test_')})
  finally:
    ckpt.close()
    writer.flush()

  summary = {
      'steps': final_step, 'steps_per_epoch': steps_per_epoch, 'epochs': len(meta['history']),
      'params': models.count_params(state.params), 'history': meta['history'],
      # Compilations of the train step in this process: one per distinct batch shape.
      'train_step_compiles': train_steps._cache_size(),  # pylint: disable=protected-access
      'stopped_early': meta['stopped_early'], 'best_epoch': meta['best_epoch'],
      'restored_best': bool(config.restore_best and meta['best_step'] is not None),
      **final,
  }
  if config.best_metric:
    summary[f'best_{config.best_metric}'] = meta['best_value']
  return state, summary
