"""Orbax checkpoints of the training state plus the loop's own bookkeeping (history, best, patience).

One CheckpointManager in `workdir/checkpoints` keeps the latest few steps (to
resume) and the best step that the training loop recorded (the note's "save
your best model"). Saves are asynchronous; writes are atomic, so a crash leaves either the
previous or the new checkpoint, never half of one.
"""
import dataclasses
import logging
import os
import shutil
from typing import Any

from absl import logging as absl_logging
from etils import epath
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

from lib import records
from lib.errors import DiskFull, UserError


def _drop_orbax_info(record: logging.LogRecord) -> bool:
  return record.levelno >= logging.WARNING or '/orbax/' not in record.pathname


# Orbax logs a dozen INFO lines per save; keep its warnings and errors only.
absl_logging.get_absl_logger().addFilter(_drop_orbax_info)


@dataclasses.dataclass
class _LatestAndBest(policies.PreservationPolicy):
  """Keeps the latest `n` steps and the step that the newest save names as best.

  The loop decides what "best" is (first of equals, as Keras does); orbax's
  BestN would rank ties differently and could delete the step the loop restores.
  """
  n: int

  def should_preserve(self, checkpoints, *, context):
    del context
    newest = checkpoints[-1].metrics if checkpoints else None
    best = (newest or {}).get('best_step')
    latest = {c.step for c in checkpoints[-self.n:]}
    return [c.step in latest or c.step == best for c in checkpoints]


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """Each array's path ('params/Dense_0/kernel') and shape; orbax's metadata and states alike."""
  def name(key):
    return str(getattr(key, 'key', getattr(key, 'name', getattr(key, 'idx', key))))

  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, 'shape'))[0]
  return {
      '/'.join(name(k) for k in path): tuple(leaf.shape
                                            ) for path, leaf in leaves if hasattr(leaf, 'shape')
  }


class Checkpoints:
  """Saves and restores (state, meta) pairs by step.

  Args:
    workdir: the run's directory; checkpoints go to `workdir/checkpoints`.
    keep: how many of the latest steps to keep (the best step is kept besides).
  """
  def __init__(self, workdir: str, keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')  # Orbax needs absolute.
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(preservation_policy=_LatestAndBest(
            n=keep)), item_names=('state', 'meta'))
    self._handler = ocp.StandardCheckpointHandler()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any], best_step: int | None = None) -> None:
    """Starts saving in the background; the next save or `close()` waits for it.

    Args:
      step: the training step.
      state: a pytree of arrays.
      meta: JSON-serializable bookkeeping saved beside it.
      best_step: the best step so far, kept until a later save names another.
    """
    self._check_free_space(step, state)
    # The JSON is written in the background while the loop goes on appending to `meta`: save
    # a snapshot (stamp copies), or a resumed run could find an epoch in its history that it
    # has yet to train. The meta carries its checksum: `restore` refuses one that reads back
    # otherwise.
    meta = records.stamp(meta)
    self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)),
        metrics={'best_step': best_step})

  def _check_free_space(self, step: int, state: Any) -> None:
    """Raises DiskFull before a save that would fill the disk.

    Checked here because a write that fails inside orbax's writer threads
    prints their tracebacks, and leaves a half-written temporary directory.
    """
    needed = sum(x.nbytes for x in jax.tree.leaves(state)) + 16 * 2**20  # + metadata, margin
    free = shutil.disk_usage(os.path.dirname(self.directory)).free
    if free < needed:
      raise DiskFull(
          f'no space left for checkpoint {step} in {self.directory}: it needs about '
          f'{needed / 2**20:.0f} MiB and {free / 2**20:.0f} MiB are free. ' +
          (f'The last complete checkpoint (step {last}) is kept; free space and run the same '
           'command again to resume' if (last := self._manager.latest_step()) is not None else
           'No checkpoint was saved yet; free space and run the same command again'))

  def wait_until_finished(self) -> None:
    """Waits until every save started so far is complete on disk."""
    self._manager.wait_until_finished()

  def restore(self, step: int, state: Any = None) -> tuple[Any, dict[str, Any]]:
    """Restores `step` into arrays shaped and sharded like `state`.

    With state=None, into a tree of dicts and lists as saved, on this process's
    first device: a checkpoint saved on any number of devices reads anywhere.
    """
    self.wait_until_finished()  # The step may still be being written.
    if state is None:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      state = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                           self._state_metadata(step).tree, is_leaf=lambda x: hasattr(x, 'shape'))
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(state),
                                      meta=ocp.args.JsonRestore()))
    return restored.state, records.verify(restored.meta,
                                          os.path.join(self.directory, str(step), 'meta'))

  def _state_metadata(self, step: int) -> Any:
    """The saved state's tree of array metadata (shapes, dtypes), read without the arrays."""
    return self._handler.metadata(epath.Path(self.directory) / str(step) / 'state')

  def _check_fits(self, step: int, state: Any) -> None:
    """Raises UserError if checkpoint `step` holds arrays of other names or shapes than `state`.

    Such a checkpoint is readable, only not by this model: it is an error
    that moves nothing, never a reason to set the checkpoint aside.
    """
    try:
      saved = _shapes(self._state_metadata(step))
    except Exception:  # pylint: disable=broad-except  # Unreadable: restore_latest decides.
      return
    here = _shapes(state)
    diffs = [
        f'{k}: {saved.get(k, "absent")} saved, {here.get(k, "absent")} here'
        for k in sorted(saved.keys() | here.keys(), key=lambda k: (not k.startswith('params'), k))
        if saved.get(k) != here.get(k)
    ]
    if diffs:
      raise UserError(
          f'checkpoint {step} in {self.directory} does not fit this model ({len(diffs)} arrays '
          f'differ: {"; ".join(diffs[:3])}{"; ..." if len(diffs) > 3 else ""}); nothing was '
          'moved: pass a new --workdir, or the config the checkpoint was trained with')

  def restore_latest(self, state: Any) -> tuple[int, Any, dict[str, Any]] | None:
    """Restores the newest checkpoint that reads back, or None if there is none.

    A checkpoint that fails to restore (corrupted, or half-written by a kill
    that orbax's atomic rename did not cover) is moved aside to
    `checkpoints_unreadable/STEP` with a warning, and the previous one is
    tried: the run resumes from the newest good step and loses nothing else.
    One that reads but holds another model's arrays is an error that moves nothing.

    Args:
      state: the template the arrays are restored into, shaped and sharded as
        this run needs them (a run saved on 8 devices restores onto 1 or 4).

    Returns:
      (step, state, meta) of the newest readable checkpoint, or None.
    """
    for step in sorted(self._manager.all_steps(), reverse=True):
      self._check_fits(step, state)
      try:
        return (step, *self.restore(step, state))
      except Exception as e:  # pylint: disable=broad-except  # Orbax raises many kinds.
        aside = os.path.join(os.path.dirname(self.directory), 'checkpoints_unreadable', str(step))
        absl_logging.warning(
            'checkpoint %d in %s cannot be read (%s: %s); moved to %s, trying '
            'the previous one', step, self.directory,
            type(e).__name__,
            str(e).splitlines()[0] if str(e) else '', aside)
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(os.path.join(self.directory, str(step)), aside)
        self._manager.reload()
    return None

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self.wait_until_finished()
    self._manager.close()
