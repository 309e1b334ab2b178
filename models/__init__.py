"""The LVSM family behind one registry and one call contract."""
from .config import PRESETS, ModelConfig, preset
from .registry import ModelCard, Published, build_model, label, list_models, model_card, model_class, register
from . import lvsm_decoder_only, lvsm_encoder_decoder, efficient_lvsm, lact, ablations  # noqa: F401  (registration order = listing order)
from .base import NVSModel, SceneState
from .ablations import EfficientLVSMGlobalInput, EfficientLVSMSharedWeights, LVSMMasked, MMDiTJoint
from .efficient_lvsm import EfficientLVSM, EfficientLVSMFinalContext, IncrementalRenderer
from .lact import LaCT, LaCTScene
from .lvsm_decoder_only import LVSMDecoderOnly
from .lvsm_encoder_decoder import LVSMEncoderDecoder
from .official import load_official, unwrap_checkpoint
from .prope import CameraTransforms, prope_attention
from .rays import pixel_rays, plucker, plucker_rays

__all__ = [
    "PRESETS", "ModelConfig", "preset", "ModelCard", "Published", "build_model", "label", "list_models", "model_card",
    "model_class", "register", "NVSModel", "SceneState",
    "EfficientLVSM", "EfficientLVSMFinalContext", "IncrementalRenderer", "EfficientLVSMSharedWeights", "EfficientLVSMGlobalInput",
    "MMDiTJoint", "LVSMMasked", "LaCT", "LaCTScene", "LVSMDecoderOnly", "LVSMEncoderDecoder", "load_official",
    "unwrap_checkpoint", "pixel_rays", "plucker", "plucker_rays", "CameraTransforms", "prope_attention",
]
