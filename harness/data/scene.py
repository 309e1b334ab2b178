"""The plain records every source and sampler exchanges: a Scene (all views of one scene), an Example
(one context/target sample of a scene), and `collate` for batching Examples."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Scene:
    """Views of one scene in the models' convention: images [v,3,S,S] in [0,1], OpenCV camera-to-world
    c2w [v,4,4] float32, pixel intrinsics fxfycxcy [v,4]."""
    images: torch.Tensor
    c2w: torch.Tensor
    fxfycxcy: torch.Tensor
    name: str
    indices: list[int] = field(default_factory=list)  # frame numbers of these views within the full scene
    # What the loader could not honour (e.g. lens distortion it did not undo), for reports to repeat.
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        v = self.images.shape[0]
        if self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"scene {self.name!r}: images must be [v,3,H,W], got {tuple(self.images.shape)}")
        if tuple(self.c2w.shape) != (v, 4, 4) or tuple(self.fxfycxcy.shape) != (v, 4):
            raise ValueError(f"scene {self.name!r}: expected c2w [{v},4,4] and fxfycxcy [{v},4], got "
                             f"{tuple(self.c2w.shape)} and {tuple(self.fxfycxcy.shape)}")
        if not self.indices:
            self.indices = list(range(v))

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class Example:
    """One training/evaluation sample: n input views and m target views of one scene."""
    scene: str
    input_images: torch.Tensor
    input_c2w: torch.Tensor
    input_fxfycxcy: torch.Tensor
    target_images: torch.Tensor
    target_c2w: torch.Tensor
    target_fxfycxcy: torch.Tensor
    input_indices: list[int]
    target_indices: list[int]
    notes: list[str] = field(default_factory=list)  # the scene's notes


BATCH_KEYS = ("input_images", "input_c2w", "input_fxfycxcy", "target_images", "target_c2w", "target_fxfycxcy")


def collate(examples: list[Example]) -> dict:
    """Stack Examples into the models' call tensors [b, views, ...]; "scene" keeps the scene names."""
    if not examples:
        raise ValueError("collate: got an empty list of examples")
    batch = {key: torch.stack([getattr(ex, key) for ex in examples]) for key in BATCH_KEYS}
    batch["scene"] = [ex.scene for ex in examples]
    return batch
