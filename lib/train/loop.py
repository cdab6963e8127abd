"""`fit`: set up, restore, the loop (step, log, evaluate, checkpoint, stop), finish.

`fit` resumes from the
workdir's latest checkpoint, evaluates every example of the validation split
every config.eval_every_epochs, keeps the best checkpoint, stops early on a
stalled metric, stops on a NaN or inf loss, and saves before it exits on
SIGINT or SIGTERM. The host reads each call's metrics once, one call late, so
it never waits on the steps it has just dispatched; a call may span several
short epochs (config.steps_per_execution), and the terminal gets at most one
line per epoch and per config.log_every_seconds.
"""
from collections.abc import Sequence
import contextlib
import os
import time
from typing import Any

from absl import logging
import flax.linen as nn
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
from lib import summary
from lib.errors import Interrupted, NonFiniteLossError
from lib.train.engine import Engine, compile_for_target, set_up
from lib.train.evaluators import CheckpointPolicy, Evaluator, checkpoint_policy, evaluators
from lib.train.hooks import Profiler, Progress, StopSignals, flat_hparams, listeners
from lib.train import population
from lib.train.state import TrainState, current_step
from lib.train.steps import Task


class _Loop:
  """The training loop and the bookkeeping it carries from call to call.

  `meta` (history, best value and step, patience, stopped_early) is saved in
  every checkpoint beside the state, so a resumed run carries on from it.

  Args:
    config: the run's config.
    engine: from `set_up`.
    evaluations: what the loop evaluates when each is due (`evaluators`).
    policy: when it saves, what is best, when it stops early.
    ckpt: the run's checkpoints.
    writer: its TensorBoard events.
    meta: the bookkeeping, fresh or restored.
    saved_step: the step of the latest checkpoint, None if there is none.
    end_on_nonfinite: a non-finite loss ends the run instead of failing it (the LR range test).
  """
  def __init__(self, config: ml_collections.ConfigDict, engine: Engine,
               evaluations: Sequence[Evaluator], policy: CheckpointPolicy,
               ckpt: checkpoints.Checkpoints, writer: summary.EventWriter, meta: dict[str, Any],
               saved_step: int | None, end_on_nonfinite: bool):
    self.config, self.engine, self.ckpt, self.writer = config, engine, ckpt, writer
    self.evaluations, self.policy = evaluations, policy
    self.meta, self.saved_step, self.end_on_nonfinite = meta, saved_step, end_on_nonfinite
    self.progress = Progress(engine.steps_per_epoch, engine.total_steps, config.log_every_steps)
    self.progress.diverged = {int(k) for k in meta.get('diverged', {})}
    # The population's shape, read once: the loop asks it after every call.
    self.members, self.varied = population.size(config), population.varied(config)
    self.last_line = 0.0  # When the terminal got its last epoch line.
    self.started, self.start_step = time.time(), 0  # For the steps/s of those lines.

  def run(self, state: TrainState, train: input_pipeline.Source) -> TrainState:
    """Trains from state.step to the end (or an early stop); returns the last state."""
    config, engine = self.config, self.engine
    step = current_step(state)
    feed = train.train_feed(config.batch_size, seed=config.seed, shuffle_buffer=config.get(
        'shuffle_buffer', 0), start_step=step, stack=engine.per_call if engine.per_call > 1 else 0,
                            seeds=population.seeds(config), shuffle=config.get('shuffle', True))
    self.started, self.start_step = time.time(), step
    profiler = Profiler(config.profile_steps, os.path.dirname(self.ckpt.directory))
    # The previous call's metrics: read one call late, so that the host never waits on
    # the steps it has just dispatched.
    pending = None
    with StopSignals() as signals, contextlib.closing(profiler):
      while step < engine.total_steps and not self.meta['stopped_early']:
        # Step: dispatch the next call.
        first, count = step, min(engine.per_call, engine.total_steps - step)
        inputs = feed.next(count, engine.train_sharding)
        if first == self.start_step and self.members > 1:  # Before a population's first call.
          self.require_memory(state, feed.data, inputs, engine.augmentation.index(step), count)
        state, metrics = engine.train_steps(state, feed.data, inputs,
                                            engine.augmentation.index(step), count)
        step += count
        profiler.after_call(step, state)
        if pending and not self.record_call(*pending):
          break
        pending = (first, count, metrics)
        evaluate_now = [e for e in self.evaluations if e.due(first, step, engine.total_steps)]
        save_now = self.policy.due(first, step, engine.total_steps)
        if not (evaluate_now or save_now or signals.received):
          continue
        # Log: this call's metrics, now that the evaluation or checkpoint needs them.
        if not self.record_call(*pending):
          break
        pending = None
        # Evaluate.
        if evaluate_now:
          save_now = self.evaluate(state, step, evaluate_now) or save_now
        # Checkpoint.
        if save_now or signals.received:
          self.save(state, step)
        # Stop on a signal, saved.
        if signals.received:
          raise Interrupted(f'{signals.received} at step {step}: checkpoint saved in '
                            f'{self.ckpt.directory}; run the same command again to resume')
      if pending:
        self.record_call(*pending)
    return state

  def require_memory(self, state: TrainState, data: Any, inputs: Any, which: int,
                     steps: int) -> None:
    """Compiles a population's train and eval steps; raises PopulationTooLarge unless they fit.

    The compilations are those the run then calls, so they cost nothing extra.
    """
    engine, size = self.engine, self.config.eval_batch_size
    programs = [(engine.train_steps.jitted(which), (state, data, inputs, steps))]
    if self.evaluations:  # The eval step on one batch, as the evaluations will build it.
      sharding = parallel.batch_sharding(parallel.make_mesh(), size)
      spec = input_pipeline.model_spec(self.evaluations[0].split, engine.augmentation.eval)
      batch = {
          k: jax.ShapeDtypeStruct((size, *v.shape), v.dtype, sharding=sharding)
          for k, v in spec.items()
      }
      batch['mask'] = jax.ShapeDtypeStruct((size,), jnp.bool_, sharding=sharding)
      programs.append((engine.eval_step, (state, batch)))
    needed = population.memory_needed(programs)
    self.meta['memory_needed_mb'] = needed / population.MIB
    logging.info('the population\'s steps need %.1f MiB beyond its state and data',
                 needed / population.MIB)
    population.require_fit(self.members, needed, population.free_memory(jax.devices()[0]))

  def record_call(self, first: int, steps: int, metrics: Any) -> bool:
    """The host's share of a finished call: NaN check, TensorBoard, history.

    Returns:
      False where a non-finite loss ends an LR range test.

    Raises:
      NonFiniteLossError: a non-finite loss in a training run.
    """
    bad = self.progress.add(first, steps, metrics)
    # A population over hyperparameters keeps training the members that have not diverged,
    # as their own runs would; results.json names the others.
    while bad and self.varied and len(self.progress.diverged) < self.members - 1:
      member = bad[2]
      self.progress.diverged.add(member)
      self.meta.setdefault('diverged', {})[str(member)] = (
          f'loss is {bad[1]} at step {bad[0]} ({population.describe(self.config, member)})')
      logging.warning('%s; the other members train on', self.meta['diverged'][str(member)])
      bad = self.progress.add(first, steps, metrics)
    if bad and self.end_on_nonfinite:
      self.meta['stopped_early'] = True
      logging.info('LR range test: loss is %s at step %d; the sweep ends there', bad[1], bad[0])
      return False
    if bad:
      kept = (f'the last good checkpoint (step {self.saved_step}) is kept in '
              f'{self.ckpt.directory}'
              if self.saved_step is not None else 'no checkpoint was saved yet')
      seed = (f' (the model of {population.describe(self.config, bad[2])})'
              if self.members > 1 else '')
      raise NonFiniteLossError(f'loss is {bad[1]} at step {bad[0]}{seed}; training stopped, '
                               f'{kept}. Lower config.learning_rate or check the inputs')
    for at, means in self.progress.windows:
      # A population over learning rates has none to log: each member's is in results.json.
      rate = ({} if 'learning_rate' in self.varied else
              {'learning_rate': float(self.engine.schedule(at - 1))})
      self.writer.write_scalars(at, {**rate, **{f'train_{k}': v for k, v in means.items()}})
    self.progress.windows.clear()
    self.meta['history'].extend(self.progress.epochs)
    self.progress.epochs.clear()
    return True

  def evaluate(self, state: TrainState, step: int, due_now: Sequence[Evaluator]) -> bool:
    """Runs the evaluations due into the epoch's record; returns whether to save (a new best)."""
    config = self.config
    per_model = {k: v for e in due_now for k, v in e(self.engine.evaluate, state).items()}
    val_metrics = population.mean(per_model)  # A population is logged and ranked by its mean.
    if self.members > 1:
      self.meta['val_per_seed'] = {k: v.tolist() for k, v in per_model.items()}
    self.writer.write_scalars(step, val_metrics)
    record = self.meta['history'][-1]
    record.update(val_metrics)
    improved = self.policy.after_evaluation(self.meta, val_metrics, step, record['epoch'])
    if any([listen(record['epoch'], val_metrics) for listen in listeners()]):
      logging.info('stopped at epoch %d by a listener (hooks.on_evaluation)', record['epoch'])
      self.meta['stopped_early'] = improved = True
    if time.time() - self.last_line >= config.log_every_seconds or step == self.engine.total_steps:
      self.last_line = time.time()
      rate = (step - self.start_step) / (self.last_line - self.started)
      logging.info(
          'epoch %d (step %d, %.0f steps/s): %s', record['epoch'], step, rate,
          ', '.join(f'{k}={v:.5g}' for k, v in record.items() if k not in ('epoch', 'step')))
    return improved

  def save(self, state: TrainState, step: int) -> None:
    if self.saved_step != step:
      self.ckpt.save(step, state, self.meta, best_step=self.meta['best_step'])
      self.saved_step = step


def _finish(engine: Engine, evaluations: Sequence[Evaluator], policy: CheckpointPolicy,
            ckpt: checkpoints.Checkpoints, meta: dict[str, Any],
            state: TrainState) -> tuple[TrainState, dict[str, float]]:
  """The best weights if the policy asks, and the final val_* and test_* metrics.

  A population's metrics are arrays of its members' values.
  """
  final_step = current_step(state)
  restore = policy.restore_best and meta['best_step'] not in (None, final_step)
  if restore:
    state, _ = ckpt.restore(meta['best_step'], state)
    logging.info('restored the best weights: epoch %d, %s=%.5g', meta['best_epoch'],
                 policy.best_metric, meta['best_value'])
  final = {}
  evaluated = [h for h in meta['history'] if any(k.startswith('val_') for k in h)]
  if 'val_per_seed' in meta:  # A population's last evaluation, model by model.
    final.update({k: np.asarray(v) for k, v in meta['val_per_seed'].items()})
  elif evaluated:
    final.update({k: v for k, v in evaluated[-1].items() if k.startswith('val_')})
  for evaluation in evaluations:  # The periodic ones again on restored weights; the final ones.
    if restore or not evaluation.every_steps:
      final.update(evaluation(engine.evaluate, state))
  return state, final


def fit(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    model: nn.Module,
    task: Task,
    train: input_pipeline.Source,
    val: input_pipeline.Source,
    test: input_pipeline.Source | None = None,
    rng_streams: Sequence[str] = (),
    augment: input_pipeline.Augment | input_pipeline.Augmentation | None = None,
    schedule: optax.Schedule | None = None,
    end_on_nonfinite: bool = False,
) -> tuple[TrainState, dict[str, Any]]:
  """Trains `model` on `train`, evaluating on `val` every config.eval_every_epochs and on `test` at the end.

  With config.lr_finder, runs the LR range test (lr_finder.py), which calls `fit` with its
  schedule.

  Args:
    config: the run's config (the engine fields of configs/common.py), as `check_config`
      passed it: the launcher checks it before any work.
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
    schedule: replaces the config's learning-rate schedule.
    end_on_nonfinite: a non-finite loss ends the run (its results are those of the
      steps before) instead of failing it.

  Returns:
    The final state (the best one with config.restore_best) and a summary:
    steps, epochs, history (per-epoch train metrics, and val metrics where
    evaluated), best epoch and value, whether it stopped early, and the final
    val_* and test_* metrics.
  """
  if config.lr_finder and schedule is None:
    from lib.train import lr_finder  # pylint: disable=g-import-not-at-top  # It calls fit.
    return lr_finder.lr_range_test(config, workdir, model=model, task=task, train=train, val=val,
                                   test=test, rng_streams=rng_streams, augment=augment)
  # Set up: steps, the state at step 0, the compiled steps.
  engine = set_up(config, model, task, train, rng_streams, input_pipeline.augmentation(augment),
                  schedule)
  if aot.active():  # --compile_for: the run's programs compiled for the target; none runs.
    compile_for_target(config, engine, train, val, test)

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
    writer.write_hparams(flat_hparams(config))

  try:
    # The loop: step, log, evaluate, checkpoint, stop.
    evaluations = evaluators(config, engine.steps_per_epoch, val, test)
    policy = checkpoint_policy(config, engine.steps_per_epoch)
    loop = _Loop(config, engine, evaluations, policy, ckpt, writer, meta, saved_step,
                 end_on_nonfinite)
    state = loop.run(state, train)
    final_step = current_step(state)
    # Finish: the best weights if asked, the final metrics.
    state, per_model = _finish(engine, evaluations, policy, ckpt, meta, state)
    final = population.mean(per_model)
    writer.write_scalars(final_step, {k: v for k, v in final.items() if k.startswith('test_')})
  finally:
    ckpt.close()
    writer.close()

  if population.members(state):  # The experiment carries on with model 0 (config.seed).
    state = population.member(state, 0)
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
      'restored_best': bool(policy.restore_best and meta['best_step'] is not None),
      **final,
  }
  if policy.best_metric:
    results[f'best_{policy.best_metric}'] = meta['best_value']
  if population.members(engine.state):  # The means above; here each member and the spread.
    results.update(population.results(config, per_model))
  if 'memory_needed_mb' in meta:  # A population's steps, beyond its state and data.
    results['memory_needed_mb'] = meta['memory_needed_mb']
  if meta.get('diverged'):  # Members of a population whose loss became NaN or inf.
    results['diverged'] = meta['diverged']
  return state, results
