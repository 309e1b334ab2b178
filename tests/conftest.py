from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import list_models, model_card

FIXTURES = Path(__file__).parent / "fixtures"
# Every list of variants comes from the registry: the released ones (official fixtures), and all.
VARIANTS = [name for name in list_models() if model_card(name).official_params]
ALL_VARIANTS = list_models()


def load_fixture(name: str, size: str = "tiny") -> dict:
    return torch.load(FIXTURES / f"{name}_{size}.pt", weights_only=True)


def portable(model, fixture: dict, key: str = "render"):
    """The model and the fixture's render to compare with it at 1e-5 on any CPU. A fixture made with a
    bfloat16 step (LaCT's Newton-Schulz) also holds the render of the same official code with that
    step in float32 (`<key>_ns_float32`): bfloat16 products round differently on CPUs with and without
    bfloat16 units, and the step amplifies that to about 5e-3, so only the float32 step compares at 1e-5."""
    if f"{key}_ns_float32" in fixture:
        return model.with_newton_schulz(torch.float32), fixture[f"{key}_ns_float32"]
    return model, fixture[key]


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield


def assert_one_line(error: pytest.ExceptionInfo, *needles: str) -> str:
    """The error's message is one line and names every needle."""
    message = str(error.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def random_views(b: int, n: int, m: int, size: int = 32, seed: int = 0):
    """Images in [0,1] and plausible cameras (small rotations, pixel intrinsics)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, n, 3, size, size, generator=g)

    def cameras(v):
        axis_angle = 0.15 * torch.randn(b, v, 3, generator=g)
        c2w = torch.eye(4).repeat(b, v, 1, 1)
        c2w[..., :3, :3] = torch.linalg.matrix_exp(torch.cross(
            axis_angle[..., None, :].expand(b, v, 3, 3), torch.eye(3).expand(b, v, 3, 3), dim=-1))
        c2w[..., :3, 3] = 0.5 * torch.randn(b, v, 3, generator=g)
        k = torch.tensor([0.9 * size, 0.9 * size, size / 2, size / 2]).repeat(b, v, 1)
        return c2w, k

    ic, ik = cameras(n)
    tc, tk = cameras(m)
    return images, ic, ik, tc, tk
