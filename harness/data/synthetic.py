"""Procedural scenes, deterministic from (seed, scene index), rendered on the fly at any resolution:
- synthetic_object (GSO/ABO-like): one composite textured object at the origin, cameras on a sphere
  looking at it, plain white background;
- synthetic_scene (RealEstate10K-like): a textured room with several textured solids and a smooth
  camera trajectory through it, sampled as video frames.
World frame: y up, floor at y = 0. Cameras are OpenCV c2w with pixel intrinsics."""
from __future__ import annotations

import abc
import math

import numpy as np
import torch

from ..errors import DataError
from .geometry import look_at
from .registry import register_source
from .render import BOX, ELLIPSOID, N_WAVES, ROOM, Solids, Textures, World
from .scene import Scene
from .source import Source, check_span, positive_int

UP = torch.tensor([0.0, 1.0, 0.0])


def _rng(seed: int, index: int, family: int, stream: int) -> np.random.Generator:
    # Independent streams for layout and cameras, so changing the view count never moves the geometry.
    return np.random.default_rng([seed, index, family, stream])


def _rotation_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _colors(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    a = rng.uniform(0.05, 0.95, 3)
    for _ in range(20):  # ask for clear contrast so the texture is visible
        b = rng.uniform(0.05, 0.95, 3)
        if np.abs(a - b).sum() > 0.9:
            break
    return a, b


def _textures(rng: np.random.Generator, count: int, freq: tuple[float, float]) -> Textures:
    rows = []
    for _ in range(count):
        a, b = _colors(rng)
        f = rng.uniform(*freq)
        stripe = rng.normal(size=3)
        waves = rng.normal(size=(N_WAVES, 3))
        rows.append(dict(
            color_a=a, color_b=b, checker_freq=f, weights=rng.dirichlet([0.6, 0.6, 0.6]),
            stripe_dir=stripe / np.linalg.norm(stripe) * rng.uniform(0.5, 1.0) * f,
            waves=waves / np.linalg.norm(waves, axis=1, keepdims=True) * rng.uniform(0.3, 1.0, (N_WAVES, 1)) * f,
            phases=rng.uniform(0, 2 * math.pi, N_WAVES)))
    return Textures(**{k: torch.tensor(np.stack([r[k] for r in rows]), dtype=torch.float32) for k in rows[0]})


def _solids(parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]) -> Solids:
    kind, center, rotation, extent = zip(*parts)
    return Solids(torch.tensor(kind), *(torch.tensor(np.stack(x), dtype=torch.float32) for x in (center, rotation, extent)))


def _light(rng: np.random.Generator) -> torch.Tensor:
    d = np.array([rng.uniform(-1, 1), rng.uniform(0.8, 1.6), rng.uniform(-1, 1)])
    return torch.tensor(d / np.linalg.norm(d), dtype=torch.float32)


def _pinhole(size: int, fov_degrees: float, count: int) -> torch.Tensor:
    f = size / (2 * math.tan(math.radians(fov_degrees) / 2))
    return torch.tensor([f, f, size / 2, size / 2], dtype=torch.float32).repeat(count, 1)


class _Synthetic(Source, abc.ABC):
    family_id = 0

    def __init__(self, count: int, seed: int, image_size: int, supersample: int, fov_degrees: float):
        name = self.source_name
        count, image_size = positive_int(count, "count", name), positive_int(image_size, "image_size", name)
        supersample = positive_int(supersample, "supersample", name)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise DataError(f"{name}: option 'seed': expected a non-negative integer, got {seed!r}")
        if isinstance(fov_degrees, bool) or not isinstance(fov_degrees, (int, float)) or not 0 < fov_degrees < 180:
            raise DataError(f"{name}: option 'fov_degrees': expected a number between 0 and 180, got {fov_degrees!r}")
        self.count, self.seed, self.image_size = count, seed, image_size
        self.supersample, self.fov_degrees = supersample, fov_degrees
        self.names = [f"{self.source_name}_s{seed}_{i:05d}" for i in range(count)]

    @abc.abstractmethod
    def world(self, i: int) -> World:
        """The geometry, textures and light of scene i."""

    @abc.abstractmethod
    def cameras(self, i: int, indices: list[int]) -> torch.Tensor:
        """OpenCV c2w [len(indices),4,4] of the given views of scene i."""

    def load_views(self, i: int, indices: list[int]) -> Scene:
        c2w = self.cameras(i, indices)
        k = _pinhole(self.image_size, self.fov_degrees, len(indices))
        images, _ = self.world(i).render(c2w, k, self.image_size, self.supersample)
        return Scene(images, c2w, k, self.names[i], list(indices))

    def depth(self, i: int, indices: list[int]) -> torch.Tensor:
        """Exact ray depth [v,S,S] through each pixel centre (inf on background), for geometric checks."""
        c2w = self.cameras(i, indices)
        return self.world(i).render(c2w, _pinhole(self.image_size, self.fov_degrees, len(indices)), self.image_size, 1)[1]


@register_source("synthetic_object")
class SyntheticObjects(_Synthetic):
    """One composite object (2-5 textured boxes/ellipsoids) at the origin; `views` cameras at distance
    `radius` on the sphere (elevation -10..50 degrees), all looking at the origin. `texture_freq`
    (low, high) is the range of texture frequencies (cycles per unit length; [0, 0] gives one solid
    colour per part); `background` is the grey level (or RGB) behind the object."""
    family = "object"
    family_id = 1

    def __init__(self, count: int = 64, seed: int = 0, image_size: int = 64, views: int = 32,
                 supersample: int = 1, fov_degrees: float = 40.0, radius: float = 2.7,
                 texture_freq: tuple[float, float] | list[float] = (2.0, 5.0), background: float | list[float] = 1.0):
        super().__init__(count, seed, image_size, supersample, fov_degrees)
        self.n_views = positive_int(views, "views", self.source_name)
        if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not radius > 0 or radius == math.inf:
            raise DataError(f"synthetic_object: option 'radius': expected a positive number, got {radius!r}")
        self.radius = radius
        if (not isinstance(texture_freq, (list, tuple)) or len(texture_freq) != 2
                or not all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in texture_freq)
                or not 0 <= texture_freq[0] <= texture_freq[1] < math.inf):
            raise DataError(f"synthetic_object: option 'texture_freq': expected [low, high] with 0 <= low <= high, "
                            f"got {texture_freq!r}")
        self.texture_freq = (float(texture_freq[0]), float(texture_freq[1]))
        try:
            self.background = torch.tensor(background, dtype=torch.float32).expand(3).clone()
        except (TypeError, ValueError, RuntimeError):
            self.background = torch.full((3,), float("nan"))
        if not bool(((self.background >= 0) & (self.background <= 1)).all()):
            raise DataError(f"synthetic_object: option 'background': expected a grey level or RGB in [0, 1], got {background!r}")

    def num_views(self, i: int) -> int:
        return self.n_views

    def world(self, i: int) -> World:
        rng = _rng(self.seed, i, self.family_id, 0)
        parts = []
        for part in range(int(rng.integers(2, 6))):
            if part == 0:
                center, extent = rng.uniform(-0.1, 0.1, 3), rng.uniform(0.3, 0.55, 3)
            else:
                direction = rng.normal(size=3)
                center = direction / np.linalg.norm(direction) * rng.uniform(0.25, 0.55)
                extent = rng.uniform(0.12, 0.4, 3)
            parts.append((BOX if rng.random() < 0.5 else ELLIPSOID, center, _random_rotation(rng), extent))
        return World(_solids(parts), _textures(rng, len(parts), self.texture_freq), torch.arange(len(parts)),
                     background=self.background, light=_light(rng), ambient=0.4)

    def cameras(self, i: int, indices: list[int]) -> torch.Tensor:
        rng = _rng(self.seed, i, self.family_id, 1)
        azimuth = torch.tensor(rng.uniform(0, 2 * math.pi, self.n_views), dtype=torch.float32)[indices]
        elevation = torch.tensor(np.radians(rng.uniform(-10, 50, self.n_views)), dtype=torch.float32)[indices]
        eye = self.radius * torch.stack([elevation.cos() * azimuth.sin(), elevation.sin(),
                                         elevation.cos() * azimuth.cos()], -1)
        return look_at(eye, torch.zeros_like(eye), UP)


@register_source("synthetic_scene")
class SyntheticScenes(_Synthetic):
    """A room (textured floor, walls, ceiling) with 5-9 textured solids in its back half, filmed by a
    camera that moves smoothly through the front half while looking into the room: `frames` frames."""
    family = "scene"
    family_id = 2

    def __init__(self, count: int = 64, seed: int = 0, image_size: int = 64, frames: int = 64,
                 span: tuple[int, int] | list[int] | None = None, supersample: int = 1, fov_degrees: float = 55.0):
        super().__init__(count, seed, image_size, supersample, fov_degrees)
        self.frames = positive_int(frames, "frames", self.source_name)
        self.span = check_span(span, self.source_name) if span is not None else (max(1, frames // 6), max(1, frames * 2 // 3))

    def num_views(self, i: int) -> int:
        return self.frames

    def _room(self, rng: np.random.Generator) -> np.ndarray:
        return np.array([rng.uniform(3.0, 4.5), rng.uniform(1.3, 1.7), rng.uniform(3.0, 4.5)])

    def world(self, i: int) -> World:
        rng = _rng(self.seed, i, self.family_id, 0)
        half = self._room(rng)
        parts = []
        for _ in range(int(rng.integers(5, 10))):
            extent = rng.uniform(0.2, 0.8, 3)
            x = rng.uniform(-half[0] + 0.8, half[0] - 0.8)
            z = rng.uniform(-half[2] + 0.8, 0.0)
            rotation = _rotation_y(rng.uniform(0, math.pi))
            if rng.random() < 0.6:
                parts.append((BOX, np.array([x, extent[1], z]), rotation, extent))
            else:
                floating = rng.random() < 0.4
                y = rng.uniform(0.8, 2 * half[1] - 0.6) if floating else extent[1]
                parts.append((ELLIPSOID, np.array([x, y, z]), rotation, extent))
        textures = Textures.cat([_textures(rng, len(parts), (1.5, 4.0)), _textures(rng, 6, (0.6, 1.8))])
        parts.append((ROOM, np.array([0.0, half[1], 0.0]), np.eye(3), half))
        return World(_solids(parts), textures, torch.arange(len(parts)),
                     background=torch.zeros(3), light=_light(rng), ambient=0.45)

    def cameras(self, i: int, indices: list[int]) -> torch.Tensor:
        half = self._room(_rng(self.seed, i, self.family_id, 0))
        rng = _rng(self.seed, i, self.family_id, 1)

        def spot(x: float, y: tuple[float, float], z: tuple[float, float]) -> np.ndarray:
            return np.array([rng.uniform(-x, x), rng.uniform(*y), rng.uniform(*z)])

        # The camera region (front half) and the looked-at region (back half, where the solids stand).
        low, high = np.array([-0.6 * half[0], 1.0, 0.4 * half[2]]), np.array([0.6 * half[0], 1.8, 0.85 * half[2]])
        start = spot(0.6 * half[0], (1.0, 1.8), (0.4 * half[2], 0.85 * half[2]))
        heading = rng.uniform(0, 2 * math.pi)
        move = rng.uniform(1.8, 3.0) * np.array([math.cos(heading), rng.uniform(-0.15, 0.15), math.sin(heading)])
        end = np.clip(start + move, low, high)
        look_a = spot(0.7 * half[0], (0.3, 1.5), (-half[2], -0.3 * half[2]))
        look_b = np.clip(look_a + np.array([rng.choice([-1, 1]) * rng.uniform(1.5, 3.5), rng.uniform(-0.5, 0.5), 0]),
                         [-0.9 * half[0], 0.2, -half[2]], [0.9 * half[0], 1.8, -0.3 * half[2]])
        wobble_freq, wobble_phase = rng.uniform(0.5, 1.5, 3), rng.uniform(0, 2 * math.pi, 3)
        s = np.asarray(indices, dtype=np.float64)[:, None] / max(1, self.frames - 1)
        eye = start + (end - start) * s + 0.08 * np.sin(2 * math.pi * wobble_freq * s + wobble_phase)
        target = look_a + (look_b - look_a) * s
        return look_at(torch.tensor(eye, dtype=torch.float32), torch.tensor(target, dtype=torch.float32), UP)
