"""Imports every module that registers an experiment kind (see `experiment.register_kind`)."""
from . import train  # noqa: F401,E402  (kinds: train, convergence)
from . import evaluate  # noqa: F401  (kind "evaluate")
from . import profile  # noqa: F401  (kinds: profile, profile_flops, profile_kv_cache, profile_efficiency)
