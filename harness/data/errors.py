"""The one error type of the data package."""
from __future__ import annotations

from ..experiment import ExperimentError


class DataError(ExperimentError):
    """Bad data on disk or a bad request to a source; the message names the file/scene/key and what was
    expected. A subclass of ExperimentError so that the CLI reports it as one line, like a bad YAML value."""
