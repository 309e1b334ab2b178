"""Training: AdamW + warm-up schedule, exact resume, DDP under torchrun, periodic validation, and the
convergence study (experiment kinds `train` and `convergence`)."""
from .config import ConvergenceExperiment, DataSpec, ModelSpec, OptimSpec, TrainExperiment, TrainSpec
from .distributed import World, init_world
from .loop import RunResult, read_log, train_model
from .optim import build_optimizer, lr_factor, parameter_groups
from . import runner  # noqa: F401  (registers the kinds)

__all__ = ["ConvergenceExperiment", "DataSpec", "ModelSpec", "OptimSpec", "TrainExperiment", "TrainSpec", "World",
           "init_world", "RunResult", "read_log", "train_model", "build_optimizer", "lr_factor", "parameter_groups"]
