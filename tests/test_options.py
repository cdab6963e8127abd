"""The training options (configs/common.py): each off by default, validated, and doing what it says."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import mnist1d
import experiments.__main__ as launcher
from lib import checkpoints, models, train
from lib.errors import UserError
from tests.conftest import tiny


def _run(workdir, **overrides):
  return launcher.run(tiny(mnist1d, **overrides), str(workdir))


def _final_state(workdir):
  ckpt = checkpoints.Checkpoints(str(workdir), keep=2)
  state, _ = ckpt.restore(ckpt.latest_step())
  ckpt.close()
  return state


@pytest.mark.parametrize('field,value,message', [
    ('weight_decay', -0.1, 'config.weight_decay=-0.1 must be >= 0'),
    ('grad_clip_norm', -1.0, 'config.grad_clip_norm=-1.0 must be >= 0'),
    ('grad_accum_steps', 0, 'config.grad_accum_steps=0 must be at least 1'),
    ('grad_accum_steps', 2, 'config.grad_accum_steps=2 must divide the 3 steps of an epoch'),
    ('ema_decay', 1.0, r'config.ema_decay=1.0 must be in \[0, 1\)'),
    ('compute_dtype', 'float16', "config.compute_dtype='float16' is unknown"),
    ('profile_steps', -1, 'config.profile_steps=-1 must be >= 0'),
])
def test_bad_option_values_are_clear_errors(tmp_path, field, value, message):
  with pytest.raises(UserError, match=message):
    _run(tmp_path, **{field: value})


def test_weight_decay_is_decoupled_and_spares_biases():
  config = tiny(mnist1d, optimizer='adam', weight_decay=0.5, learning_rate=0.1)
  params = {'Dense_0': {'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)}}
  tx = train.create_optimizer(config, optax.constant_schedule(0.1))
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)  # No gradient: only the decay moves.
  np.testing.assert_allclose(updates['Dense_0']['kernel'], -0.1 * 0.5 * np.ones((3, 2)), rtol=1e-6)
  np.testing.assert_array_equal(updates['Dense_0']['bias'], 0)
  config.update(optimizer='sgd', momentum=0.9)  # SGDW: the decay is not fed to the momentum.
  tx = train.create_optimizer(config, optax.constant_schedule(0.1))
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates['Dense_0']['kernel'], -0.05 * np.ones((3, 2)), rtol=1e-6)


def test_weight_decay_run_ends_with_smaller_kernels(tmp_path):
  _run(tmp_path / 'plain', optimizer='sgd', learning_rate=0.1)
  _run(tmp_path / 'decayed', optimizer='sgd', learning_rate=0.1, weight_decay=0.5)
  norm = lambda p: sum(float(jnp.sum(k**2)) for k in jax.tree.leaves(p) if k.ndim > 1)
  plain, decayed = _final_state(tmp_path / 'plain'), _final_state(tmp_path / 'decayed')
  assert norm(decayed['params']) < 0.9 * norm(plain['params'])


def test_grad_clip_norm_bounds_each_update(tmp_path):
  config = tiny(mnist1d, optimizer='sgd', momentum=0.0, grad_clip_norm=0.01, learning_rate=0.1)
  tx = train.create_optimizer(config, optax.constant_schedule(0.1))
  params = {'w': jnp.zeros(4)}
  updates, _ = tx.update({'w': jnp.full(4, 100.0)}, tx.init(params), params)
  assert float(optax.global_norm(updates)) == pytest.approx(0.1 * 0.01, rel=1e-5)
  results = _run(tmp_path, optimizer='sgd', momentum=0.0, grad_clip_norm=0.01)
  assert np.isfinite(results['val_loss'])


def test_grad_accum_steps_equal_the_large_batch(tmp_path):
  """4 batches of 20 per update against batches of 80: the same examples, the same updates.

  SGD: Adam's division by the root of tiny second moments would magnify the float
  summation order into visible differences.
  """
  sgd = {'optimizer': 'sgd', 'learning_rate': 0.1, 'steps_per_epoch': None, 'num_epochs': 3}
  large = _run(tmp_path / 'large', batch_size=80, **sgd)
  accum = _run(tmp_path / 'accum', batch_size=20, grad_accum_steps=4, **sgd)
  assert (large['steps'], accum['steps']) == (6, 24)  # 160 examples: 2 updates per epoch.
  a, b = _final_state(tmp_path / 'large'), _final_state(tmp_path / 'accum')
  for x, y in zip(jax.tree.leaves(a['params']), jax.tree.leaves(b['params']), strict=True):
    np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6)
  assert accum['val_loss'] == pytest.approx(large['val_loss'], rel=1e-4)


def test_ema_is_evaluated_and_checkpointed_beside_the_params(tmp_path):
  results = _run(tmp_path, ema_decay=0.5, best_metric='val_ema_loss')
  assert {'val_ema_loss', 'val_ema_accuracy', 'best_val_ema_loss'} <= set(results)
  assert all('val_ema_loss' in h for h in results['history'])
  state = _final_state(tmp_path)
  assert jax.tree.structure(state['ema_params']) == jax.tree.structure(state['params'])
  assert not all(
      np.array_equal(x, y)
      for x, y in zip(jax.tree.leaves(state['ema_params']), jax.tree.leaves(state['params'])))
  # One step's update, by hand: ema <- decay * ema + (1 - decay) * params.
  step = train.make_train_step(lambda out, b: {'loss': jnp.sum(out**2, -1)},
                               train.metrics_collection(['loss']), ema_decay=0.5)
  model = models.create('mlp', hidden=(), outputs=1)
  config = tiny(mnist1d, ema_decay=0.5, optimizer='sgd', momentum=0.0, learning_rate=0.1)
  tx = train.create_optimizer(config, optax.constant_schedule(0.1))
  before = train.create_train_state(config, model, (3,), jnp.float32, tx,
                                    jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  after, _ = step(before, {'x': jnp.ones((2, 3))})
  jax.tree.map(lambda e, p0, p1: np.testing.assert_allclose(e, 0.5 * p0 + 0.5 * p1, rtol=1e-6),
               after.ema_params, before.params, after.params)


def test_bfloat16_compute_keeps_float32_params(tmp_path):
  full = _run(tmp_path / 'f32')
  half = _run(tmp_path / 'bf16', compute_dtype='bfloat16')
  state = _final_state(tmp_path / 'bf16')
  assert {x.dtype for x in jax.tree.leaves(state['params'])} == {np.dtype('float32')}
  losses = [(a['train_loss'], b['train_loss']) for a, b in zip(full['history'], half['history'])]
  assert all(a != b and b == pytest.approx(a, rel=0.05) for a, b in losses), losses


def test_profile_steps_write_a_trace_and_the_start_logs_a_parameter_table(tmp_path, caplog):
  caplog.set_level('INFO')
  _run(tmp_path, profile_steps=2)
  traces = [
      f for _, _, files in os.walk(tmp_path / 'plugins' / 'profile') for f in files
      if f.endswith('.xplane.pb')
  ]
  assert len(traces) == 1
  assert 'Dense_0/kernel | (125, 10)' in caplog.text and 'Total: 5,210' in caplog.text
