"""Imports every module that registers an experiment kind (see `experiment.register_kind`)."""
