"""Reading one rank's scenes for the scoring loop: a `torch.utils.data.DataLoader` whose workers
(`data.num_workers`; 0: this process) read and decode the views (JPEG decoding and resizing would
otherwise keep the GPU waiting), cut each run of `batch_size` scenes into batches of equal view
shapes and, on CUDA, pin them so the copy to the GPU does not wait for the host. A scene whose data
fails comes back as its failure (the run records it and goes on)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ..data import Example, collate
from ..pipeline import failure_status, one_line


@dataclass
class Group:
    """Scenes of equal view shapes, batched (`batch` as `collate` makes it), or one scene that failed to load."""
    examples: list[Example] = field(default_factory=list)
    batch: dict[str, Any] | None = None
    failed: str = ""  # the scene whose data failed
    status: str = ""
    error: str = ""

    def pin_memory(self) -> "Group":
        """Called by the DataLoader's pinning thread: the batch's tensors in page-locked memory."""
        if self.batch is not None:
            self.batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in self.batch.items()}
        return self


class _Scenes(Dataset):
    def __init__(self, scenes: list[str], fetch: Callable[[str], Example]):
        self.scenes, self.fetch = scenes, fetch

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, k: int) -> Example | Group:
        scene = self.scenes[k]
        try:
            return self.fetch(scene)
        except Exception as error:  # bad data on disk: recorded for this scene, the others still run
            return Group(failed=scene, status=failure_status(error), error=one_line(error))


def _groups(items: list[Example | Group]) -> list[Group]:
    """A run of scenes as loaded, cut wherever a scene failed or the view shapes change."""
    out: list[Group] = []
    run: list[Example] = []

    def close() -> None:
        if run:
            out.append(Group(list(run), collate(run)))
            run.clear()

    for item in items:
        if isinstance(item, Group):
            close()
            out.append(item)
            continue
        if run and (item.input_images.shape != run[0].input_images.shape
                    or item.target_images.shape != run[0].target_images.shape):
            close()
        run.append(item)
    close()
    return out


def scene_groups(scenes: list[str], fetch: Callable[[str], Example], batch_size: int, num_workers: int,
                 device: torch.device) -> Iterator[Group]:
    """`scenes` in order, loaded by `fetch`, as batches of at most `batch_size` scenes and single failures."""
    if not scenes:
        return
    loader = DataLoader(_Scenes(scenes, fetch), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_groups, pin_memory=device.type == "cuda")
    for groups in loader:
        yield from groups
