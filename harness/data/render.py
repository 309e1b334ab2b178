"""A small analytic ray caster in torch: oriented boxes, ellipsoids and an inside-out room box, solid
procedural textures and Lambertian shading. All rays of all views are cast in one batch: hit distances
are computed for every (solid, ray) pair, everything else (local point, normal, texture, shading) only
for the nearest hit of each ray. Optional supersampling with box-filter averaging reduces aliasing."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.rays import pixel_rays

_EPS = 1e-4
N_WAVES = 6
RAY_CHUNK = 1 << 16
BOX, ELLIPSOID, ROOM = 0, 1, 2


@dataclass
class Textures:
    """Per-surface solid texture parameters, K surfaces. The pattern is evaluated in the surface's local
    frame, so it sticks to the surface and moves with parallax like real texture."""
    color_a: torch.Tensor       # [K,3]
    color_b: torch.Tensor       # [K,3]
    checker_freq: torch.Tensor  # [K] cells per unit length
    weights: torch.Tensor       # [K,3] mix of (checker, stripes, smooth noise)
    stripe_dir: torch.Tensor    # [K,3] wave vector of the stripes (cycles per unit length)
    waves: torch.Tensor         # [K,N_WAVES,3] wave vectors of the smooth noise
    phases: torch.Tensor        # [K,N_WAVES]

    def albedo(self, surface: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Albedo [N,3] at local points p [N,3] of surfaces `surface` [N] (indices into this table)."""
        checker = torch.floor(p * self.checker_freq[surface, None]).sum(-1) % 2
        stripes = 0.5 + 0.5 * torch.sin(2 * torch.pi * (p * self.stripe_dir[surface]).sum(-1))
        noise = torch.sin(2 * torch.pi * torch.einsum("nc,nkc->nk", p, self.waves[surface]) + self.phases[surface])
        noise = 0.5 + 0.85 * noise.mean(-1)
        value = (torch.stack([checker, stripes, noise], -1) * self.weights[surface]).sum(-1).clamp(0, 1)
        return torch.lerp(self.color_a[surface], self.color_b[surface], value[:, None])

    @staticmethod
    def cat(parts: list["Textures"]) -> "Textures":
        return Textures(**{k: torch.cat([getattr(t, k) for t in parts]) for k in vars(parts[0])})


@dataclass
class Solids:
    """K oriented solids, each with a local frame: world = rotation @ local + center."""
    kind: torch.Tensor      # [K] long: BOX, ELLIPSOID or ROOM (an inside-out box seen from within)
    center: torch.Tensor    # [K,3]
    rotation: torch.Tensor  # [K,3,3] columns are the local axes in world coordinates
    extent: torch.Tensor    # [K,3] box half-sizes or ellipsoid radii

    def __len__(self) -> int:
        return self.kind.shape[0]

    def select(self, mask: torch.Tensor) -> "Solids":
        return Solids(self.kind[mask], self.center[mask], self.rotation[mask], self.extent[mask])

    def hits(self, o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Distance [N,K] along world rays o, d [N,3] to each solid (inf where missed)."""
        # Local rays [N,K,3] through one matmul per ray set (a rigid map keeps the ray parameter t).
        k = len(self)
        axes = self.rotation.permute(1, 0, 2).reshape(3, 3 * k)
        ol = (o @ axes).view(-1, k, 3) - torch.einsum("kc,kcj->kj", self.center, self.rotation)
        dl = (d @ axes).view(-1, k, 3)
        # Solids are ordered slab kinds (boxes, rooms) first, then ellipsoids (see World), so each
        # kind is a contiguous slice: views instead of boolean-mask copies of [N,K,3] tensors.
        n_slab = int((self.kind != ELLIPSOID).sum())
        t = []
        if n_slab:
            o_s, d_s, half = ol[:, :n_slab], dl[:, :n_slab], self.extent[:n_slab]
            inv = 1.0 / torch.where(d_s.abs() < 1e-9, 1e-9, d_s)
            t1, t2 = (-half - o_s) * inv, (half - o_s) * inv
            t_near = torch.minimum(t1, t2).amax(-1)
            t_far = torch.maximum(t1, t2).amin(-1)
            hit = torch.where(self.kind[:n_slab] == ROOM, t_far, t_near)
            t.append(torch.where((t_near <= t_far) & (hit > _EPS), hit, torch.inf))
        if n_slab < k:
            r = self.extent[n_slab:]
            os_, ds = ol[:, n_slab:] / r, dl[:, n_slab:] / r
            a, b, c = (ds * ds).sum(-1), (os_ * ds).sum(-1), (os_ * os_).sum(-1) - 1
            disc = b * b - a * c
            near = (-b - disc.clamp_min(0).sqrt()) / a
            t.append(torch.where((disc >= 0) & (near > _EPS), near, torch.inf))
        return torch.cat(t, dim=1)

    def surface(self, which: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For world hit points [N,3] on solids `which` [N]: local points, world unit normals (facing the
        viewer's side) and the face index 0..5 (-x,+x,-y,+y,-z,+z) of boxes/rooms."""
        rotation, kind, extent = self.rotation[which], self.kind[which], self.extent[which]
        local = torch.einsum("nc,ncj->nj", points - self.center[which], rotation)
        scaled = local / extent
        axis = scaled.abs().argmax(-1)
        positive = torch.gather(scaled, 1, axis[:, None])[:, 0] > 0
        face_normal = F.one_hot(axis, 3).to(points.dtype) * torch.where(positive, 1.0, -1.0)[:, None]
        normal = torch.where((kind == ELLIPSOID)[:, None], scaled / extent, face_normal)
        normal = torch.where((kind == ROOM)[:, None], -normal, normal)
        normal = F.normalize(torch.einsum("nij,nj->ni", rotation, normal), dim=-1)
        return local, normal, 2 * axis + positive.long()


@dataclass
class World:
    """Solids with one texture each, except a room, whose 6 faces use 6 consecutive textures starting at
    its own index in `texture_offset`."""
    solids: Solids
    textures: Textures
    texture_offset: torch.Tensor   # [K] first texture of each solid
    background: torch.Tensor       # [3], seen where nothing is hit
    light: torch.Tensor            # [3] unit direction towards the light
    ambient: float = 0.35

    def __post_init__(self) -> None:
        order = torch.argsort((self.solids.kind == ELLIPSOID).long(), stable=True)
        self.solids = self.solids.select(order)
        self.texture_offset = self.texture_offset[order]

    def cast(self, o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Colour [N,3] and hit distance [N] (inf on background) of world rays o, d [N,3]."""
        t_hit, which = self.solids.hits(o, d).min(1)
        hit = torch.isfinite(t_hit)
        color = self.background.expand(o.shape[0], 3).clone()
        if hit.any():
            which_hit, t = which[hit], t_hit[hit]
            local, normal, face = self.solids.surface(which_hit, o[hit] + t[:, None] * d[hit])
            texture = self.texture_offset[which_hit] + torch.where(self.solids.kind[which_hit] == ROOM, face, 0)
            lambert = (normal * self.light).sum(-1).clamp_min(0)
            shade = self.ambient + (1 - self.ambient) * lambert
            color[hit] = self.textures.albedo(texture, local) * shade[:, None]
        return color.clamp(0, 1), t_hit

    @torch.no_grad()
    def render(self, c2w: torch.Tensor, fxfycxcy: torch.Tensor, size: int | tuple[int, int],
               supersample: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [v,3,H,W] and distance along each ray [v,H,W] (inf on background) for OpenCV cameras
        c2w [v,4,4] with pixel intrinsics; `size` is S (square) or (H, W). Rays come from the models' own
        `pixel_rays`, so images and cameras agree exactly as the models read them. With supersampling
        the returned distance is the nearest one within each pixel's footprint."""
        s = supersample
        h, w = (size, size) if isinstance(size, int) else size
        o, d = pixel_rays(c2w.to(torch.float32), fxfycxcy.to(torch.float32) * s, h * s, w * s)
        v = c2w.shape[0]
        o, d = o.permute(0, 2, 3, 1).reshape(-1, 3), d.permute(0, 2, 3, 1).reshape(-1, 3)
        # Chunks bound the [rays, solids, 3] temporaries (a 64-frame 256x256 scene is 4M rays).
        parts = [self.cast(o[k:k + RAY_CHUNK], d[k:k + RAY_CHUNK]) for k in range(0, o.shape[0], RAY_CHUNK)]
        color, depth = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        color = color.reshape(v, h * s, w * s, 3).permute(0, 3, 1, 2)
        depth = depth.reshape(v, h * s, w * s)
        if s > 1:
            color = F.avg_pool2d(color, s)
            depth = -F.max_pool2d(-depth[:, None], s)[:, 0]
        return color.contiguous(), depth
