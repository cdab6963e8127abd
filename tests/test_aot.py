"""--compile_for: runs compiled for TPUs and GPUs that are not here (lib/aot/, requirements-compile.txt).

The TPU topologies come from libtpu, the GPU's from JAX's CUDA plugin; both
describe chips without them, so these tests run on any CPU where the compilers
are installed (CI installs them) and skip with a message elsewhere.
"""
import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

from lib import aot
from lib import models
from lib import parallel
from lib.cpu import conv as cpu_conv
from lib.cpu import conv_kernel
from tests import conftest
from tests.conftest import REPO, run_cli, SHARED_DATA

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec('libtpu') is None,
    reason='libtpu is not installed (pip install -r requirements-compile.txt)')
needs_cuda_plugin = pytest.mark.skipif(
    importlib.util.find_spec('jax_plugins.xla_cuda12') is None,
    reason='the CUDA plugin is not installed (pip install -r requirements-compile.txt)')


def _errors(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith('error:')]


@needs_libtpu
def test_mnist_cnn_compiles_for_v5e_8_and_writes_only_its_report(mnist_data_dir, tmp_path):
  workdir = tmp_path / 'run'
  out = run_cli('--config=configs/mnist_cnn.py', f'--workdir={workdir}', '--compile_for=v5e-8',
                f'--config.data_dir={mnist_data_dir}')
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'Traceback' not in out.stderr
  assert 'compiled for v5e-8' in out.stdout and 'HBM' in out.stdout and 'GFLOP' in out.stdout
  with open(workdir / 'compile_v5e-8_float32.json') as f:
    report = json.load(f)
  assert report['devices'] == 8 and report['processes'] == 1
  names = [p['name'] for p in report['programs']]
  assert names[0] == 'train: 1 step a call', names
  assert 'predictions figure: 1,000 test images' in names
  step = report['programs'][0]
  # The step holds the 60,000 training images as uint8 (47 MB) and the model's params.
  assert 47e6 < step['argument_bytes'] < 200e6, step
  assert 0 < step['peak_bytes'] + step['resident_bytes'] < report['hbm_bytes'] / 10
  assert report['step_flops'] > 1e8 and report['step_seconds_bound'] > 0
  assert report['run_seconds_bound'] > 4680 * report['step_seconds_bound']
  # A report and nothing a run would leave: no checkpoint, no config record, no results.
  assert not os.path.exists(workdir / 'checkpoints')
  assert not os.path.exists(workdir / 'config.json')
  assert not os.path.exists(workdir / 'results.json')


@needs_libtpu
def test_a_run_too_large_for_the_chip_is_one_line_naming_the_hbm(mnist_data_dir, tmp_path):
  out = run_cli('--config=configs/mnist_cnn.py', f'--workdir={tmp_path}', '--compile_for=v5e-8',
                f'--config.data_dir={mnist_data_dir}', '--config.eval_batch_size=4194304')
  assert out.returncode == 1, out.stderr[-3000:]
  assert 'Traceback' not in out.stderr, out.stderr[-3000:]
  [error] = _errors(out.stderr)
  assert 'does not fit' in error and 'HBM' in error and 'eval_batch_size' in error, error
  # A batch larger than the training split is refused as a real run refuses it.
  out = run_cli('--config=configs/mnist_cnn.py', f'--workdir={tmp_path}', '--compile_for=v5e-8',
                f'--config.data_dir={mnist_data_dir}', '--config.batch_size=4194304')
  assert out.returncode == 1
  [error] = _errors(out.stderr)
  assert 'larger than the 60000 training examples' in error, error


def test_compiling_makes_the_checks_a_run_makes(tmp_path):
  out = run_cli('--config=configs/autoencoder.py:tiny', f'--workdir={tmp_path}',
                '--compile_for=v5e-1', '--config.num_seeds=2')
  assert out.returncode == 1
  [error] = _errors(out.stderr)
  assert "config.num_seeds=2 or config.population: experiment 'autoencoder' computes" in error, error
  assert not os.listdir(tmp_path)  # Refused before the workdir is touched.


def test_a_mistyped_target_is_one_line_listing_the_targets(tmp_path):
  out = run_cli('--config=configs/celsius.py', f'--workdir={tmp_path}', '--compile_for=v5e8')
  assert out.returncode == 1
  [error] = _errors(out.stderr)
  assert "--compile_for=v5e8 is unknown; choose one of ['v5e-1'" in error and 'h100' in error


def _step_text() -> str:
  """The lowered train step of the MNIST CNN through lib.cpu.conv.specialize, as the engine has it."""
  model = models.create('cnn', outputs=10, features=(32, 64), dense=256, pool='avg')
  apply = cpu_conv.specialize(model.apply)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((16, 28, 28, 1)))
  tx = optax.sgd(0.1)

  def step(params, opt_state, x):
    grads = jax.grad(lambda p: jnp.mean(apply(p, x)**2))(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  mesh = parallel.make_mesh()
  rep = parallel.replicated(mesh)
  place = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep)
  args = (jax.tree.map(place, params), jax.tree.map(place, jax.eval_shape(tx.init, params)),
          jax.ShapeDtypeStruct((16, 28, 28, 1), jnp.float32,
                               sharding=parallel.batch_sharding(mesh)))
  return jax.jit(step).lower(*args).as_text()


@needs_libtpu
@pytest.mark.skipif(not conv_kernel.available(), reason='no lib/cpu kernel on this CPU')
def test_no_lib_cpu_custom_call_enters_a_tpu_program():
  # On this CPU the same step calls lib/cpu's kernels: the check below can fail.
  assert 'jaxnotes_conv' in _step_text()
  with aot.compiling_for(aot.target('v5e-1'), 'float32'):
    assert parallel.platform() == 'tpu'
    assert cpu_conv.resolve('auto') == 'xla'
    assert 'jaxnotes_' not in _step_text()
  assert parallel.platform() == 'cpu'  # Left as it was.


@needs_cuda_plugin
@pytest.mark.skipif(not conv_kernel.available(), reason='no lib/cpu kernel on this CPU')
def test_no_lib_cpu_custom_call_enters_a_gpu_program():
  with aot.compiling_for(aot.target('h100'), 'float32'):
    assert parallel.platform() == 'gpu'
    assert 'jaxnotes_' not in _step_text()


def _compiled(*args: str, timeout: int = 1500) -> tuple[list[dict], str]:
  out = subprocess.run([sys.executable, '-m', 'benchmarks.compiled', *args], cwd=REPO,
                       capture_output=True, text=True, timeout=timeout)
  records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{')]
  assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
  return records, out.stdout


@needs_libtpu
def test_every_config_and_variant_compiles_for_v5e_1_in_float32_and_v5e_8_in_bfloat16(tmp_path):
  if not os.path.isdir(os.path.join(SHARED_DATA, 'fashion_mnist')):
    pytest.skip(f'MNIST and Fashion-MNIST files not found in {SHARED_DATA}')
  if 'process' in conftest.background_compiles:  # Started when the session's collection ended.
    process, log = conftest.background_compiles['process'], conftest.background_compiles['log']
    process.wait(timeout=3600)
    log.seek(0)
    stdout, returncode = log.read(), process.returncode
  else:
    out = subprocess.run([
        sys.executable, '-m', 'benchmarks.compiled', *conftest.EVERY_CONFIG_ARGS,
        f'--data_dir={tmp_path}'
    ], cwd=REPO, capture_output=True, text=True, timeout=3600)
    stdout, returncode = out.stdout + out.stderr, out.returncode
  records = [json.loads(line) for line in stdout.splitlines() if line.startswith('{')]
  assert returncode == 0, stdout[-5000:]
  configs = {r['config'] for r in records}
  assert {
      'mnist_cnn', 'mnist_cnn:tiny', 'vae:latent20', 'forecast:relu_study', 'celsius',
      'gradient_descent', 'tensors', 'mnist1d:gru', 'autoencoder:sweep', 'any_size_cnn'
  } <= configs
  # Each config on one chip in float32 and on a slice in bfloat16 (--paired): both dtypes and
  # both kinds of program, without compiling every config four times.
  assert len(records) == len(configs) * 2
  assert {(r['target'], r['dtype']) for r in records} == {('v5e-1', 'float32'),
                                                          ('v5e-8', 'bfloat16')}
  # cats_vs_dogs's photos are not among the shared data; the two experiments without a model
  # have no compute_dtype, so no bfloat16.
  skipped = {(r['config'], r['why']) for r in records if r['status'] == 'skipped'}
  assert {c for c, _ in skipped} == {
      'any_size_cnn:cats_vs_dogs', 'gradient_descent', 'gradient_descent:tiny', 'tensors',
      'tensors:tiny'
  }, skipped
  assert not [r for r in records if r['status'] not in ('ok', 'skipped')], stdout[-5000:]


@needs_libtpu
@needs_cuda_plugin
def test_a_4_host_v5e_16_a_v2_8_and_an_h100_compile_mnist_cnn_and_the_vae(mnist_data_dir):
  records, _ = _compiled('--targets=v5e-16,v2-8,h100', '--configs=mnist_cnn,vae:latent20',
                         f'--data={SHARED_DATA}', f'--data_dir={mnist_data_dir}', '--jobs=2')
  by = {(r['config'], r['target']): r for r in records}
  assert all(r['status'] == 'ok' for r in records), records
  # v5e-16: 16 chips on 4 hosts, each process holding its share of the data shards.
  assert by['mnist_cnn', 'v5e-16']['devices'] == 16
  assert by['mnist_cnn', 'v5e-16']['processes'] == 4
  assert by['mnist_cnn', 'v2-8']['devices'] == 8
  for config in ('mnist_cnn', 'vae:latent20'):
    h100 = by[config, 'h100']
    assert h100['devices'] == 1 and 0 < h100['max_bytes_per_device'] < h100['hbm_bytes']
    # The GPU compiler gives no cost analysis: the FLOPs are v5e-1's count of the same program.
    assert h100['step_flops'] is None and by[config, 'v5e-1']['step_flops'] > 0
