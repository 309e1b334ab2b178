"""PRoPE and GTA attention against the release's `prope_dot_product_attention` on random inputs (a
non-square patch grid), and the property they exist for: attention that sees only relative cameras."""
from __future__ import annotations

import pytest
import torch

from conftest import FIXTURES
from models import prope_attention
from models.rays import random_rigid_transform

pytestmark = pytest.mark.parity


def _fixture():
    f = torch.load(FIXTURES / "prope_tiny.pt", weights_only=True)
    grid = {key: f[key] for key in ("viewmats", "patches_x", "patches_y", "image_width", "image_height")}
    return f, grid


@pytest.mark.parametrize("intrinsics, key", [(True, "out_prope"), (False, "out_gta")])
def test_prope_and_gta_equal_the_release(intrinsics, key):
    f, grid = _fixture()
    assert (grid["patches_x"], grid["patches_y"]) == (4, 3)
    out = prope_attention(f["q"], f["k"], f["v"], Ks=f["Ks"] if intrinsics else None, **grid)
    assert (out - f[key]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("intrinsics", [True, False])
def test_moving_every_camera_by_one_rigid_transform_changes_nothing(intrinsics):
    """World-to-camera matrices of a moved world are viewmat @ T^-1: P_i P_j^-1 is unchanged, so is the output;
    moving one camera alone changes it (the cameras do enter)."""
    f, grid = _fixture()
    Ks = f["Ks"] if intrinsics else None
    out = prope_attention(f["q"], f["k"], f["v"], Ks=Ks, **grid)
    moved = {**grid, "viewmats": grid["viewmats"] @ torch.linalg.inv(random_rigid_transform(1))}
    assert (prope_attention(f["q"], f["k"], f["v"], Ks=Ks, **moved) - out).abs().max().item() <= 1e-4
    one = grid["viewmats"].clone()
    one[:, 1] = one[:, 1] @ torch.linalg.inv(random_rigid_transform(2))
    assert (prope_attention(f["q"], f["k"], f["v"], Ks=Ks, **{**grid, "viewmats": one}) - out).abs().max().item() > 1e-3
