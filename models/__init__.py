"""The LVSM family behind one registry and one call contract."""
from .config import CAMERA_ENCODINGS, SHARED_SIZES, VariantConfig
from .registry import (ModelCard, Published, build_model, config_class, label, list_models, model_card, model_class,
                       model_config, preset_names, presets, register, released_models)
from . import lvsm_decoder_only, lvsm_encoder_decoder, efficient_lvsm, lact, ablations  # noqa: F401  (registration order = listing order)
from .base import CAPABILITIES, NVSModel, SceneState
from .ablations import EfficientLVSMGlobalInput, EfficientLVSMSharedWeights, LVSMMasked, MMDiTJoint
from .efficient_lvsm import EfficientLVSM, EfficientLVSMConfig, EfficientLVSMFinalContext, IncrementalRenderer
from .lact import LaCT, LaCTConfig, LaCTScene
from .lvsm_decoder_only import DecoderOnlyConfig, LVSMDecoderOnly
from .lvsm_encoder_decoder import EncoderDecoderConfig, LVSMEncoderDecoder
from .official import load_official, unwrap_checkpoint
from .prope import CameraTransforms, prope_attention
from .rays import pixel_rays, plucker, plucker_rays

__all__ = [
    "CAMERA_ENCODINGS", "SHARED_SIZES", "VariantConfig", "ModelCard", "Published", "build_model", "config_class", "label",
    "list_models", "model_card", "model_class", "model_config", "preset_names", "presets", "register", "released_models",
    "CAPABILITIES", "NVSModel", "SceneState",
    "EfficientLVSM", "EfficientLVSMConfig", "EfficientLVSMFinalContext", "IncrementalRenderer", "EfficientLVSMSharedWeights",
    "EfficientLVSMGlobalInput", "MMDiTJoint", "LVSMMasked", "LaCT", "LaCTConfig", "LaCTScene", "LVSMDecoderOnly",
    "DecoderOnlyConfig", "LVSMEncoderDecoder", "EncoderDecoderConfig", "load_official", "unwrap_checkpoint",
    "pixel_rays", "plucker", "plucker_rays", "CameraTransforms", "prope_attention",
]
