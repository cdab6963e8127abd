"""Tensors: the notes' stacking vs concatenating, ranks, logits and softmax, kernel = weights.

Command (no download, no training; a second):
  python -m experiments --config=configs/tensors.py --workdir=runs/tensors
Expected: the shapes the notes give ((3,) + (3,) → (6,) concatenated, (2, 3) stacked;
an RNN batch (4, 30, 1)); softmax of logits sums to 1; from logits scaled to 100 and
beyond, log(softmax(...)) gives an infinite loss in float32 while the cross-entropy
taken from the logits stays finite; a Dense layer's output is x @ kernel + bias.
Smoke test: --config=configs/tensors.py:tiny (the same).
"""
import ml_collections

# Every variant get_config takes ('' is the config as it is).
VARIANTS = ('', 'tiny')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = 'tensors'  # Module of experiments/ that runs this config.
  c.seed = 0  # Draws the layers' params and inputs.
  c.logits = (2.0, 1.0, 0.1)  # The logits softmax turns into probabilities (the course's example).
  # Multipliers of the logits for the stability demonstration.
  c.logit_scales = (1.0, 10.0, 100.0, 1000.0)
  if variant not in ('', 'tiny'):
    raise ValueError(f"unknown variant {variant!r}; choose '' or 'tiny'")
  return c
