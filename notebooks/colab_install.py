"""What notebooks/colab.ipynb installs on Colab: only what the runtime lacks, never over Colab's own stack.

Colab ships numpy, TensorFlow, TensorBoard, matplotlib and the Jupyter kernel
its notebooks run in; reinstalling any of them at another version breaks the
running kernel (or asks for a restart), so they are kept as Colab has them.
Every other pin of requirements.txt is installed where the runtime lacks it or
has another version, and JAX comes in the build for the runtime's
accelerator (jax[tpu] or jax[cuda12] at the pinned version). The test tools of
requirements-ci.txt are never installed there.

Standard library only: it runs before anything is installed.
"""
from collections.abc import Callable, Iterable, Mapping
import importlib.metadata
import os
import re
import subprocess
import sys

# Colab's own packages: kept at Colab's version whenever Colab has them.
COLAB_OWNS = ('numpy', 'tensorflow', 'tensorboard', 'matplotlib', 'ipykernel', 'ipython',
              'jupyter-client', 'jupyter-core', 'tornado', 'protobuf')
# Installed as the runtime's TensorFlow: satisfied by Colab's `tensorflow`.
_SAME_AS = {'tensorflow-cpu': 'tensorflow'}


def _name(requirement: str) -> str:
  """PEP 503's normalized name: lowercase, runs of -_. as one '-'."""
  return re.sub(r'[-_.]+', '-', requirement).lower()


def pins(path: str) -> dict[str, str]:
  """requirements.txt's `name==version` lines as {normalized name: version}."""
  found = {}
  with open(path) as f:
    for line in f:
      line = line.split('#', 1)[0].strip()
      match = re.fullmatch(r'([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)', line)
      if match:
        found[_name(match.group(1))] = match.group(2)
  return found


def accelerator(environ: Mapping[str, str] = os.environ,
                has_nvidia_gpu: Callable[[], bool] | None = None) -> str:
  """'tpu', 'gpu' or 'cpu': the runtime Colab gave this notebook."""
  if environ.get('COLAB_TPU_ADDR') or environ.get('TPU_NAME') or os.path.exists('/dev/accel0'):
    return 'tpu'
  if has_nvidia_gpu is None:
    has_nvidia_gpu = lambda: subprocess.run(
        ['nvidia-smi'],
        capture_output=True,  # pylint: disable=g-long-lambda
        check=False).returncode == 0
  try:
    return 'gpu' if has_nvidia_gpu() else 'cpu'
  except OSError:  # No nvidia-smi at all.
    return 'cpu'


def installed_versions() -> dict[str, str]:
  """{normalized name: version} of every installed distribution."""
  return {_name(d.metadata['Name'] or ''): d.version for d in importlib.metadata.distributions()}


def plan(required: Mapping[str, str], installed: Mapping[str, str], device: str) -> list[str]:
  """The requirements to install: `name==version` for each pin the runtime lacks.

  Args:
    required: requirements.txt's pins (`pins`).
    installed: the runtime's distributions and versions (`installed_versions`).
    device: 'tpu', 'gpu' or 'cpu' (`accelerator`).

  Returns:
    pip requirement strings; empty when nothing is missing.
  """
  wanted = []
  for name, version in required.items():
    if name == 'jaxlib':
      continue  # Comes with the jax requirement below, as the accelerator's build needs.
    if name == 'jax':
      extra, plugin = {
          'tpu': ('[tpu]', 'libtpu'), 'gpu': ('[cuda12]', 'jax-cuda12-plugin'), 'cpu': ('', None)
      }[device]
      ready = (installed.get('jax') == version and installed.get('jaxlib') == version and
               (plugin is None or plugin in installed))
      if not ready:
        wanted.append(f'jax{extra}=={version}')
      continue
    owner = _SAME_AS.get(name, name)
    if owner in COLAB_OWNS and owner in installed:
      continue
    if installed.get(name) != version:
      wanted.append(f'{name}=={version}')
  return wanted


def install(root: str, in_colab: bool, *, pip: Callable[[Iterable[str]], None] | None = None,
            installed: Mapping[str, str] | None = None, device: str | None = None) -> list[str]:
  """On Colab, installs what `plan` says for `root`'s requirements.txt; elsewhere nothing.

  Args:
    root: the jaxnotes checkout.
    in_colab: whether this runs on Colab (elsewhere the checkout's environment is used as is).
    pip: runs `pip install` with these arguments (a stub in tests).
    installed: the runtime's distributions (default: `installed_versions()`).
    device: the accelerator (default: `accelerator()`).

  Returns:
    The requirements installed.
  """
  if not in_colab:
    return []
  if pip is None:
    pip = lambda args: subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '-q', *args],  # pylint: disable=g-long-lambda
        check=True)
  wanted = plan(pins(os.path.join(root, 'requirements.txt')),
                installed_versions() if installed is None else installed,
                accelerator() if device is None else device)
  if wanted:
    pip(wanted)
  return wanted
