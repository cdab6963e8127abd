"""MNIST-1D: the paper's protocol in PyTorch against jaxnotes' configs, side by side, whole processes.

  pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu  # benchmark-only
  python -m benchmarks.mnist1d [--seeds=5 --first_seed=0] [--model=cnn --model=gru ...]

The PyTorch side is a rewrite of the paper's training loop
(github.com/greydanus/mnist1d, `train.py` and `models.py`): the same generated
data (4,000 / 1,000 sequences of length 40, seed 42; shuffled variants permute
the 40 positions by numpy's default_rng(42), as configs/mnist1d.py does), the
paper's four models in PyTorch's default initialization, Adam 1e-2, batch 100,
`for step in range(6000 + 1)` over the training sequences in their stored order,
test accuracy every 250 steps and after the last. The jaxnotes side is
`python -m experiments --config=configs/mnist1d.py:MODEL --config.seed=K` in a
new workdir with an empty compilation cache (a first run). Each is a fresh
process timed from start to exit. A round is one seed; within it the models
run one after the other, PyTorch and jaxnotes alternating which goes first, so
a noisy machine slows both alike.

Prints a line per process, then a Markdown table per model: final test
accuracy (mean ± std over seeds, each seed's), the best evaluation's, and the
median seconds of a whole process; the paper's figure beside them. Also checks
that optax.adam and torch.optim.Adam make the same updates (--check_adam only).
"""
import json
import os
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags

from benchmarks import processes

# The paper's figures (Greydanus 2020): test accuracy, %; None where it gives none (logistic
# regression and the MLP do not see the order of their inputs).
PAPER = {
    'logistic': 32, 'mlp': 68, 'cnn': 94, 'gru': 91, 'logistic_shuffled': None,
    'mlp_shuffled': None, 'cnn_shuffled': 56, 'gru_shuffled': 57
}
_MODELS = flags.DEFINE_multi_enum('model', list(PAPER), list(PAPER),
                                  'The models (variants) to run.')
_SEEDS = flags.DEFINE_integer('seeds', 5, 'Seeds, one round each, from --first_seed.')
_FIRST_SEED = flags.DEFINE_integer('first_seed', 0, 'The first round\'s seed.')
_TORCH = flags.DEFINE_enum(
    'torch', None, list(PAPER),
    'Run the paper\'s protocol for this model in this process (used by the '
    'benchmark itself).')
_SEED = flags.DEFINE_integer('seed', 0, 'With --torch: the seed.')
_CHECK_ADAM = flags.DEFINE_bool('check_adam', False,
                                'Compare optax.adam with torch.optim.Adam, then exit.')


def _data(shuffled: bool) -> dict:
  """The paper's dataset from the mnist1d package, positions permuted as configs/mnist1d.py does."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mnist1d.data import get_dataset_args, make_dataset  # pylint: disable=g-import-not-at-top
  args = get_dataset_args()
  args.num_samples, args.train_split, args.seed = 5000, 0.8, 42
  data = make_dataset(args)
  positions = np.arange(data['x'].shape[1])
  if shuffled:
    positions = np.random.default_rng(42).permutation(positions)
  return {k: data[k][:, positions] if k.startswith('x') else data[k] for k in data}


def torch_protocol(variant: str, seed: int) -> dict:
  """The paper's loop for `variant`; returns final and best test accuracy."""
  import torch  # pylint: disable=g-import-not-at-top
  nn = torch.nn

  class MLP(nn.Module):
    def __init__(self, hidden: int = 100):
      super().__init__()
      self.linear1, self.linear2 = nn.Linear(40, hidden), nn.Linear(hidden, hidden)
      self.linear3 = nn.Linear(hidden, 10)

    def forward(self, x):
      h = self.linear1(x).relu()
      h = h + self.linear2(h).relu()
      return self.linear3(h)

  class CNN(nn.Module):
    def __init__(self, channels: int = 25):
      super().__init__()
      self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
      self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
      self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
      self.linear = nn.Linear(channels * 5, 10)

    def forward(self, x):
      h = self.conv1(x.view(-1, 1, x.shape[-1])).relu()
      h = self.conv3(self.conv2(h).relu()).relu()
      return self.linear(h.view(h.shape[0], -1))

  class GRU(nn.Module):
    def __init__(self, hidden: int = 6):
      super().__init__()
      self.gru = nn.GRU(1, hidden, batch_first=True, bidirectional=True)
      self.linear = nn.Linear(2 * hidden * 40, 10)

    def forward(self, x):
      h, _ = self.gru(x.view(*x.shape[:2], 1))
      return self.linear(h.reshape(h.shape[0], -1))

  torch.manual_seed(seed)
  name = variant.removesuffix('_shuffled')
  model = {'logistic': lambda: nn.Linear(40, 10), 'mlp': MLP, 'cnn': CNN, 'gru': GRU}[name]()
  data = _data(variant.endswith('_shuffled'))
  x_train, x_test = torch.Tensor(data['x']), torch.Tensor(data['x_test'])
  y_train, y_test = torch.LongTensor(data['y']), torch.LongTensor(data['y_test'])
  criterion = nn.CrossEntropyLoss()
  optimizer = torch.optim.Adam(model.parameters(), 1e-2, weight_decay=0)

  def accuracy(x, y) -> float:
    with torch.no_grad():
      return float((model(x).argmax(-1) == y).float().mean())

  batch, steps, tests = 100, 6000, []
  for step in range(steps + 1):  # As the paper's loop: 6,001 updates.
    bix = (step * batch) % len(x_train)
    loss = criterion(model(x_train[bix:bix + batch]), y_train[bix:bix + batch])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    if step % 250 == 0:  # The paper's evaluation: test loss, train and test accuracy.
      with torch.no_grad():
        criterion(model(x_test), y_test)
      accuracy(x_train, y_train)
      tests.append(accuracy(x_test, y_test))
  return {
      'final': tests[-1], 'best': max(tests), 'params': sum(p.numel() for p in model.parameters())
  }


def check_adam() -> float:
  """Largest difference of 200 Adam(1e-2) updates, optax against torch, from the same params and
  gradients (float32)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  start = rng.normal(size=(1000,)).astype(np.float32)
  grads = rng.normal(size=(200, 1000)).astype(np.float32) * rng.lognormal(size=(200, 1)).astype(
      np.float32)
  p = torch.nn.Parameter(torch.from_numpy(start.copy()))
  opt = torch.optim.Adam([p], 1e-2)
  tx = optax.adam(1e-2)
  q = start.copy()
  state = tx.init(q)
  for g in grads:
    p.grad = torch.from_numpy(g.copy())
    opt.step()
    update, state = tx.update(g, state, q)
    q = np.asarray(optax.apply_updates(q, update))
  return float(np.max(np.abs(p.detach().numpy() - q)))


def _jaxnotes(variant: str, seed: int, workdir: str) -> dict:
  processes.run_process(
      processes.experiment(f'configs/mnist1d.py:{variant}', workdir, f'seed={seed}'))
  with open(os.path.join(workdir, 'results.json')) as f:
    r = json.load(f)
  return {'final': r['test_accuracy'], 'best': r['best_val_accuracy'], 'params': r['params']}


def _torch(variant: str, seed: int) -> dict:
  _, done = processes.run_process([
      sys.executable, '-m', 'benchmarks.mnist1d', f'--torch={variant}', f'--seed={seed}'
  ])
  return json.loads(done.stdout.strip().splitlines()[-1])


def _spread(values: list[float]) -> str:
  pct = [100 * v for v in values]
  return (f'{statistics.mean(pct):.1f} ± {statistics.stdev(pct) if len(pct) > 1 else 0:.1f}% '
          f'({", ".join(f"{v:.1f}" for v in pct)})')


def main(argv):
  del argv
  if _TORCH.value:
    print(json.dumps(torch_protocol(_TORCH.value, _SEED.value)))
    return
  if _CHECK_ADAM.value:
    print(f'optax.adam vs torch.optim.Adam, 200 updates of 1,000 float32 params: '
          f'max |difference| {check_adam():.3g}')
    return
  variants = list(dict.fromkeys(_MODELS.value))
  runs = {v: {'pytorch': [], 'jaxnotes': []} for v in variants}
  with tempfile.TemporaryDirectory() as tmp:
    for seed in range(_FIRST_SEED.value, _FIRST_SEED.value + _SEEDS.value):
      for i, variant in enumerate(variants):
        order = ('pytorch', 'jaxnotes') if (seed + i) % 2 == 0 else ('jaxnotes', 'pytorch')
        for who in order:
          start = time.perf_counter()
          if who == 'pytorch':
            r = _torch(variant, seed)
          else:
            r = _jaxnotes(variant, seed, os.path.join(tmp, f'{variant}-{seed}'))
          r['seconds'] = time.perf_counter() - start
          runs[variant][who].append(r)
          print(
              f'seed {seed}: {variant} {who}: {100 * r["final"]:.1f}% final, '
              f'{100 * r["best"]:.1f}% best, {r["seconds"]:.1f} s', flush=True)
  print('\n| model | paper | PyTorch protocol: final | best | s a seed | jaxnotes: final | best '
        '| s a seed |\n|---|---|---|---|---|---|---|---|')
  for variant, by in runs.items():
    cells = []
    for who in ('pytorch', 'jaxnotes'):
      rs = by[who]
      cells += [
          _spread([r['final'] for r in rs]),
          _spread([r['best'] for r in rs]), f'{statistics.median(r["seconds"] for r in rs):.1f}'
      ]
    print(f'| {variant} ({by["jaxnotes"][0]["params"]:,} / {by["pytorch"][0]["params"]:,} params) '
          f'| {"–" if PAPER[variant] is None else f"{PAPER[variant]}%"} | ' + ' | '.join(cells) +
          ' |')
  print(json.dumps(runs))


if __name__ == '__main__':
  app.run(main)
