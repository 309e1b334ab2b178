"""Imports every module that registers an experiment kind (see `experiment.register_kind`)."""
from . import evaluate  # noqa: F401  (kind "evaluate")
