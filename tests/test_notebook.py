"""notebooks/colab.ipynb runs top to bottom on CPU with a tiny config (as on Colab, minus installs)."""
import os

import nbclient
import nbformat

from tests.conftest import REPO


def test_colab_notebook_runs_and_shows_results_and_plots(tmp_path):
  notebook = nbformat.read(os.path.join(REPO, 'notebooks', 'colab.ipynb'), as_version=4)
  params = [c for c in notebook.cells if 'parameters' in c.metadata.get('tags', [])]
  assert len(params) == 1
  # mnist1d is generated locally: nothing to download.
  params[0].source = (f"CONFIG = 'mnist1d'\nVARIANT = 'tiny'\nOVERRIDES = {{}}\nDRIVE = False\n"
                      f"WORKDIR = {str(tmp_path / 'run')!r}\n")
  nbclient.NotebookClient(
      notebook, timeout=600, kernel_name='python3',
      resources={'metadata': {'path': os.path.join(REPO, 'notebooks')}}).execute()
  outputs = [o for c in notebook.cells if c.cell_type == 'code' for o in c.get('outputs', [])]
  text = ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
  assert 'devices of kind' in text and '"test_accuracy":' in text, text[-2000:]
  images = [o for o in outputs if o.output_type == 'display_data' and 'image/png' in o.data]
  assert len(images) >= 2  # curves.png and the experiment's own plots.
  assert os.path.exists(tmp_path / 'run' / 'results.json')
  assert os.listdir(tmp_path / 'run' / 'checkpoints')
