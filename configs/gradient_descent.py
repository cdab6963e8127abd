"""Gradient descent on one number (MIT 6.S191 lab 1, part 1): minimize (x - 4)^2 from a random x.

Command:
  python -m experiments --config=configs/gradient_descent.py --workdir=runs/gradient_descent
Expected: x_final and x_final_optax within 1e-3 of 4 after 500 steps of lr 1e-2
(each step shrinks the error by 1 - 2 * lr = 0.98; 0.98^500 = 4e-5).
Hardware and time: 2-core CPU, a few seconds. No download.
"""
import ml_collections

# Every variant get_config takes ('' is the config as it is).
VARIANTS = ('', 'tiny')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = 'gradient_descent'  # Module of experiments/ that runs this config.
  c.seed = 0  # Draws the starting x from a standard normal.
  c.target = 4.0  # The minimum of the loss (x - target)^2.
  c.learning_rate = 1e-2  # Step size of x -= learning_rate * grad.
  c.num_steps = 500  # Gradient steps.
  if variant == 'tiny':
    c.num_steps = 50
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; choose '' or 'tiny'")
  return c
