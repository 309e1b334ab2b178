"""Training: AdamW + warm-up schedule, exact resume, DDP under torchrun, periodic validation, and the
convergence study (experiment kinds `train` and `convergence` in `kinds`, their tables in `summary`, their
figures in `figures`)."""
from .config import ConvergenceExperiment, OptimSpec, TrainData, TrainExperiment, TrainSpec
from ..distributed import World, init_world
from .loop import RunResult, Trainer, read_log, train_model
from .optim import build_optimizer, lr_factor, parameter_groups

__all__ = ["ConvergenceExperiment", "OptimSpec", "TrainData", "TrainExperiment", "TrainSpec", "World", "init_world",
           "RunResult", "Trainer", "read_log", "train_model", "build_optimizer", "lr_factor", "parameter_groups"]
