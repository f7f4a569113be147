"""The optimizer API in one import (kept for the modules that import it from here).

Optimizer types, their config and building live in `trainer/optimizers/`, the LR schedules in
`trainer/schedules.py`.
"""

from .optimizers import (OPTIMIZERS, OptimizerConfig, build_optimizer, effective_learning_rate,
                         effective_learning_rate_reader, effective_learning_rates)
from .schedules import SCHEDULES, lr_multiplier

OPTIMIZER_TYPES = tuple(OPTIMIZERS)
SCHEDULERS = tuple(SCHEDULES)

__all__ = ["OPTIMIZERS", "OPTIMIZER_TYPES", "OptimizerConfig", "SCHEDULERS", "SCHEDULES", "build_optimizer",
           "effective_learning_rate", "effective_learning_rate_reader", "effective_learning_rates", "lr_multiplier"]
