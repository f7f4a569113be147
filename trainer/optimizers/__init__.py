"""Optimizers with kohya's meanings: the table of types, the node's config, building and the effective lr.

`table.py` holds one row per optimizer type, `config.py` the OptimizerConfig (LORA_OPTIMIZER), `build.py`
the optimizer and LR schedule for a run; the schedules themselves are `trainer/schedules.py`.
"""

from .arguments import Argument, parse_extra_arguments
from .build import (build_optimizer, effective_learning_rate, effective_learning_rate_reader, effective_learning_rates,
                    first_group_lr)
from .config import WIDGET_ARGUMENTS, OptimizerConfig
from .packages import Package, package_problem
from .table import OPTIMIZERS, OptimizerType, completed_betas

__all__ = ["Argument", "OPTIMIZERS", "completed_betas", "OptimizerConfig", "OptimizerType", "Package", "WIDGET_ARGUMENTS",
           "build_optimizer", "effective_learning_rate", "effective_learning_rate_reader", "effective_learning_rates",
           "first_group_lr", "package_problem", "parse_extra_arguments"]
