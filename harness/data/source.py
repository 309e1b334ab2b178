"""The common shape of every data source: a torch Dataset of Scenes, addressable by scene name, that
can also return just some views of a scene (so samplers decode/render only what they use)."""
from __future__ import annotations

import numbers
from collections import OrderedDict
from typing import Any, Callable, Hashable, Sequence

from torch.utils.data import Dataset

from ..errors import DataError
from .scene import Scene

FAMILIES = ("scene", "object")


class Source(Dataset):
    """A finite collection of scenes. Subclasses set `names`, `family`, `span` and implement
    `num_views` and `load_views`.

    family "scene": views are frames of a video; training context views are `span` frames apart with the
    targets between them (RealEstate10K). family "object": unordered views; any views may be drawn."""
    source_name: str = "source"
    family: str = "scene"
    span: tuple[int, int] = (25, 192)
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def num_views(self, i: int) -> int:
        raise DataError(f"{type(self).__name__} does not implement num_views")

    def load_views(self, i: int, indices: list[int]) -> Scene:
        raise DataError(f"{type(self).__name__} does not implement load_views")

    def views(self, i: int, indices: Sequence[int]) -> Scene:
        """Scene i restricted to the given frame indices (in that order), checked against its length."""
        i = self._check_scene(i)
        n = self.num_views(i)
        indices = [int(j) for j in indices]
        bad = [j for j in indices if not 0 <= j < n]
        if bad:
            raise DataError(f"{self.source_name}: scene {self.names[i]!r}: view index {bad[0]} out of range; "
                            f"the scene has {n} views (0..{n - 1})")
        return self.load_views(i, indices)

    def __getitem__(self, i: int) -> Scene:
        i = self._check_scene(i)
        return self.views(i, range(self.num_views(i)))

    def index_of(self, name: str) -> int | None:
        """Position of the scene called `name`, or None when this source has no such scene."""
        if not hasattr(self, "_name_to_index"):
            self._name_to_index = {n: k for k, n in enumerate(self.names)}
        return self._name_to_index.get(name)

    def _check_scene(self, i: int) -> int:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.source_name}: scene index {i} out of range; the source has {len(self)} scenes")
        return i % len(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source_name!r}, {len(self)} scenes, family={self.family!r})"


def positive_int(value: Any, option: str, source: str) -> int:
    """A source option that counts something (scenes, views, pixels, chunks): a zero or negative count
    would yield an empty or broken source much later, with an error that does not name the option."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise DataError(f"{source}: option {option!r}: expected a positive integer, got {value!r}")
    return int(value)


def optional_size(value: Any, option: str, source: str) -> int | None:
    """`image_size` of a real source: a positive integer, or None to keep the files' size."""
    return None if value is None else positive_int(value, option, source)


def check_protocol(protocol: Any, patch_size: Any, source: str) -> tuple[str, int]:
    """The evaluation protocol that resizes a real source's frames (`protocols`), and the patch size
    the `lvsm` protocol rounds widths to."""
    from .protocols import PROTOCOLS
    if protocol not in PROTOCOLS:
        raise DataError(f"{source}: option 'protocol': expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return protocol, positive_int(patch_size, "patch_size", source)


def check_span(span: Any, source: str) -> tuple[int, int]:
    """The [low, high] frame distance between the outer context views: 1 <= low <= high."""
    if (not isinstance(span, (list, tuple)) or len(span) != 2
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in span)
            or not 1 <= span[0] <= span[1]):
        raise DataError(f"{source}: option 'span': expected [low, high] integers with 1 <= low <= high, got {span!r}")
    return int(span[0]), int(span[1])


class LRU:
    """A small bounded cache (chunks, metadata files) that, unlike functools.lru_cache on a bound
    method, pickles with its source for DataLoader workers."""

    def __init__(self, load: Callable[[Any], Any], size: int):
        self.load, self.size, self.items = load, size, OrderedDict()

    def __call__(self, key: Hashable) -> Any:
        if key not in self.items:
            self.items[key] = self.load(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        self.items.move_to_end(key)
        return self.items[key]
