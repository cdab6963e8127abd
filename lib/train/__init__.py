"""The training engine: every experiment that learns from batches trains through `fit`.

  state.py      config checks, step arithmetic, optimizer and schedule, the train state
                (one model, or a population)
  steps.py      the compiled programs: the train step (one, or a scan of several a call),
                the eval step, evaluation over a padded, masked split
  population.py several models as one program (seeds, the optimizer's hyperparameters):
                members, init, their mean and results
  engine.py     what a run sets up once, and its compile for an accelerator (lib.aot)
  hooks.py      what the loop calls between steps: when it is time, epoch and window means,
                signals, the profiler
  evaluators.py what the loop asks: the evaluations due, when to save, the best, early stopping
  loop.py       `fit`: set up, restore, loop (step, log, evaluate, checkpoint, stop), finish
  lr_finder.py  the LR range test on the same engine
"""
from lib.train.hooks import on_evaluation
from lib.train.loop import fit
from lib.train.lr_finder import lr_range_test
from lib.train.lr_finder import lr_sweep_schedule
from lib.train.population import member
from lib.train.population import members
from lib.train.state import check_config
from lib.train.state import COMPUTE_DTYPES
from lib.train.state import create_optimizer
from lib.train.state import create_train_state
from lib.train.state import current_step
from lib.train.state import epochs_to_steps
from lib.train.state import learning_rate_schedule
from lib.train.state import OPTIMIZERS
from lib.train.state import SCHEDULES
from lib.train.state import steps_per_call
from lib.train.state import TrainState
from lib.train.steps import evaluate
from lib.train.steps import jit_eval_step
from lib.train.steps import make_eval_step
from lib.train.steps import make_train_step
from lib.train.steps import metrics_collection
from lib.train.steps import Task
from lib.train.steps import TrainSteps

__all__ = [
    'COMPUTE_DTYPES', 'OPTIMIZERS', 'SCHEDULES', 'Task', 'TrainState', 'TrainSteps', 'check_config',
    'create_optimizer', 'create_train_state', 'current_step', 'epochs_to_steps', 'evaluate', 'fit',
    'jit_eval_step', 'learning_rate_schedule', 'lr_range_test', 'lr_sweep_schedule',
    'make_eval_step', 'make_train_step', 'member', 'members', 'metrics_collection', 'on_evaluation',
    'steps_per_call'
]
