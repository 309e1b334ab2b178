"""Profiling: FLOPs (counted on the meta device and analytic), latency and peak memory of the
variants as the numbers of input views N and target views M grow.

Modules, one job each: `inputs` (synthetic views), `flops` (FlopCounterMode vs the analytic
formula), `timing` and `memory` (one measured call), `measure` (both together), `forward` (one
forward point: FLOPs and measured call), `sweep` (points -> records, resumable), `fit` (growth
exponents), `report` (tables and log-log plots), `spec` (the YAML fields every profiling kind shares,
and the measure-then-report run they share) and one module per experiment kind: `speed` (`profile`),
`flop_sweep` (`profile_flops`), `kv_cache` (`profile_kv_cache`), `efficiency` (`profile_efficiency`).
"""
from .flops import FlopCount, FlopCounter
from .measure import MeasureSettings, measure_call
from .sweep import Sweep

__all__ = ["FlopCount", "FlopCounter", "MeasureSettings", "measure_call", "Sweep"]

# Importing the kind modules registers `profile`, `profile_flops`, `profile_kv_cache`, `profile_efficiency`.
from . import efficiency, flop_sweep, kv_cache, speed  # noqa: E402,F401
