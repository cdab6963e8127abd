"""notebooks/colab.ipynb runs top to bottom on CPU with a tiny config (as on Colab, minus installs)."""
import importlib.util
import os
import re
import subprocess
import sys
import types

import nbclient
import nbformat
import pytest

from notebooks import colab_install
from tests.conftest import REPO


def test_colab_notebook_runs_and_shows_results_and_plots(tmp_path):
  notebook = nbformat.read(os.path.join(REPO, 'notebooks', 'colab.ipynb'), as_version=4)
  params = [c for c in notebook.cells if 'parameters' in c.metadata.get('tags', [])]
  assert len(params) == 1
  # mnist1d is generated locally: nothing to download.
  params[0].source = (f"CONFIG = 'mnist1d'\nVARIANT = 'tiny'\nOVERRIDES = {{}}\nDRIVE = False\n"
                      f"WORKDIR = {str(tmp_path / 'run')!r}\n")
  nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3', resources={
      'metadata': {'path': os.path.join(REPO, 'notebooks')}
  }).execute()
  outputs = [o for c in notebook.cells if c.cell_type == 'code' for o in c.get('outputs', [])]
  text = ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
  assert 'devices of kind' in text and '"test_accuracy":' in text, text[-2000:]
  if importlib.util.find_spec('libtpu'):  # The compiled report before training (lib/aot/).
    assert 'compiled for v5e-1' in text and 'HBM' in text, text[-3000:]
  images = [o for o in outputs if o.output_type == 'display_data' and 'image/png' in o.data]
  assert len(images) >= 2  # curves.png and the experiment's own plots.
  assert os.path.exists(tmp_path / 'run' / 'results.json')
  assert os.listdir(tmp_path / 'run' / 'checkpoints')


# A Colab runtime's own stack, older than the pins; no flax, clu, orbax or mnist1d.
_COLAB = {
    'numpy': '1.26.4', 'tensorflow': '2.19.0', 'tensorboard': '2.19.0', 'matplotlib': '3.10.0',
    'ipykernel': '6.17.1', 'protobuf': '5.29.4', 'jax': '0.5.2', 'jaxlib': '0.5.2',
    'jax-cuda12-plugin': '0.5.2', 'optax': '0.2.8', 'absl-py': '1.4.0',
    'tensorflow-datasets': '4.9.9'
}
_NEVER_ON_COLAB = {
    'numpy', 'tensorflow', 'tensorflow-cpu', 'tensorboard', 'matplotlib', 'ipykernel', 'pytest',
    'nbclient', 'nbformat', 'pyflakes', 'jaxlib'
}


def test_colab_install_cell_installs_only_what_colab_lacks(monkeypatch):
  """The notebook's install cell, run as on Colab (detection forced on), against a recording pip."""
  calls = []

  def run(args, **kwargs):
    del kwargs
    calls.append(list(args))
    return subprocess.CompletedProcess(args, 1 if args[0] == 'nvidia-smi' else 0)

  notebook = nbformat.read(os.path.join(REPO, 'notebooks', 'colab.ipynb'), as_version=4)
  cell = next(c.source for c in notebook.cells if 'colab_install.install' in c.source)
  monkeypatch.setitem(sys.modules, 'google.colab', types.ModuleType('google.colab'))
  monkeypatch.setattr(subprocess, 'run', run)
  monkeypatch.setattr(colab_install, 'installed_versions', lambda: dict(_COLAB))
  monkeypatch.chdir(os.path.join(REPO, 'notebooks'))
  monkeypatch.setattr(sys, 'path', list(sys.path))
  exec(cell, {})  # pylint: disable=exec-used
  pips = [c for c in calls if c[1:4] == ['-m', 'pip', 'install']]
  assert len(pips) == 1, calls  # One pip call; no clone: the checkout is there.
  wanted = pips[0][5:]
  pinned = colab_install.pins(os.path.join(REPO, 'requirements.txt'))
  assert f"jax=={pinned['jax']}" in wanted  # A CPU runtime: nvidia-smi failed, no TPU.
  assert {
      f'{n}=={pinned[n]}' for n in ('flax', 'clu', 'orbax-checkpoint', 'absl-py',
                                    'tensorflow-datasets', 'mnist1d')
  } <= set(wanted)
  assert 'optax==0.2.8' not in wanted  # Colab has it at the pin already.
  assert not {re.split(r'[\[=]', w)[0] for w in wanted} & _NEVER_ON_COLAB, wanted


@pytest.mark.parametrize('device,build', [('tpu', 'jax[tpu]'), ('gpu', 'jax[cuda12]'),
                                          ('cpu', 'jax')])
def test_colab_install_brings_the_accelerators_jax_build(device, build):
  pinned = colab_install.pins(os.path.join(REPO, 'requirements.txt'))
  wanted = colab_install.plan(pinned, _COLAB, device)
  assert f"{build}=={pinned['jax']}" in wanted
  assert not {re.split(r'[\[=]', w)[0] for w in wanted} & _NEVER_ON_COLAB, wanted
  # A runtime that has every pin (and the accelerator's plugin) gets nothing.
  ready = {**pinned, 'libtpu': '0.0.30', 'jax-cuda12-plugin': pinned['jax']}
  assert colab_install.plan(pinned, ready, device) == []
  # Outside Colab the checkout's environment is used as is.
  assert colab_install.install(REPO, in_colab=False, pip=pytest.fail) == []
