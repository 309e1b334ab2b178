"""Multi-view data: procedural scenes and on-disk formats, all returned as Scenes in the models'
convention (images [v,3,S,S] in [0,1], OpenCV c2w, pixel fxfycxcy), and the samplers that cut them
into training/evaluation Examples."""
from . import lvsm_json, opencv_cameras, re10k, synthetic, transforms_json  # noqa: F401  (importing registers the sources)
from ..errors import DataError
from .geometry import look_at, normalize_poses, opengl_to_opencv
from .protocols import DEFAULT_PROTOCOL, PROTOCOLS, get_protocol
from .registry import list_sources, open_source, register_source
from .samplers import (TrainingStream, choose_views, evaluation_examples, load_evaluation_index, make_evaluation_index,
                       make_example, save_evaluation_index, training_examples)
from .scene import BATCH_KEYS, Example, Scene, collate
from .source import Source

__all__ = ["BATCH_KEYS", "DataError", "Example", "Scene", "Source", "collate", "list_sources", "look_at",
           "normalize_poses", "open_source", "opengl_to_opencv", "register_source", "DEFAULT_PROTOCOL", "PROTOCOLS", "get_protocol",
           "TrainingStream", "choose_views", "evaluation_examples", "load_evaluation_index", "make_evaluation_index",
           "make_example", "save_evaluation_index", "training_examples"]
