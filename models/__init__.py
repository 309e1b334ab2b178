"""The LVSM family behind one registry and one call contract."""
from .config import PRESETS, ModelConfig, preset
from .registry import build_model, list_models, model_class, register
from . import efficient_lvsm, lvsm_decoder_only, lvsm_encoder_decoder  # noqa: F401  (registers the variants)
from .base import NVSModel
from .efficient_lvsm import EfficientLVSM, EfficientLVSMFinalContext, IncrementalRenderer
from .lvsm_decoder_only import LVSMDecoderOnly
from .lvsm_encoder_decoder import LVSMEncoderDecoder
from .official import load_official, unwrap_checkpoint
from .rays import pixel_rays, plucker, plucker_rays

__all__ = [
    "PRESETS", "ModelConfig", "preset", "build_model", "list_models", "model_class", "register", "NVSModel",
    "EfficientLVSM", "EfficientLVSMFinalContext", "IncrementalRenderer", "LVSMDecoderOnly", "LVSMEncoderDecoder", "load_official",
    "unwrap_checkpoint", "pixel_rays", "plucker", "plucker_rays",
]
