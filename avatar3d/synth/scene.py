"""Render frames of the synthetic subject: textured head over a static plate.

The plate is the source photo with the head (as seen at the photo's pose) inpainted
away, keeping the shoulders; the rendered head's neck fades into them.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatar3d.synth.camera import Intrinsics
from avatar3d.synth.head_mesh import HeadMesh
from avatar3d.synth.raster import interpolate, rasterize
from avatar3d.synth.rig import deform, to_camera


@dataclass
class Scene:
    """Everything needed to render a frame (pickled once into each worker process)."""

    mesh: HeadMesh
    intrinsics: Intrinsics
    texture_u8: np.ndarray  # [S,S,4] uint8 RGB + person alpha, the source photo
    plate: np.ndarray  # [H,W,3] float32 static background + torso
    rest_translation: np.ndarray  # [3] head position at rest (camera frame)
    plate_u8: np.ndarray | None = None  # [H,W,3] uint8 copy of ``plate``

    def set_plate(self, plate: np.ndarray) -> None:
        self.plate = plate.astype(np.float32)
        self.plate_u8 = np.clip(plate * 255.0 + 0.5, 0, 255).astype(np.uint8)


def render_head(scene: Scene, vertices_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice]]:
    """(rgb uint8 [h,w,3], alpha float32 [h,w], box) of the head alone, inside its bounding ``box``."""
    intr = scene.intrinsics
    mesh = scene.mesh
    proj = intr.project(vertices_cam)
    frags = rasterize(proj[:, :2], proj[:, 2], mesh.triangles, intr.height, intr.width)
    x0 = int(np.clip(np.floor(proj[:, 0].min()), 0, intr.width))
    x1 = int(np.clip(np.ceil(proj[:, 0].max()) + 1, 0, intr.width))
    y0 = int(np.clip(np.floor(proj[:, 1].min()), 0, intr.height))
    y1 = int(np.clip(np.ceil(proj[:, 1].max()) + 1, 0, intr.height))
    box = (slice(y0, y1), slice(x0, x1))
    h, w = y1 - y0, x1 - x0
    flat = frags.triangle[box].reshape(-1)
    pix = np.flatnonzero(flat >= 0)
    tri = flat[pix]
    bary = frags.bary[box].reshape(-1, 3)[pix]
    corner = mesh.triangle_uva[tri]  # [N,3,3]: u, v, alpha at the corners
    uva = bary[:, 0:1] * corner[:, 0] + bary[:, 1:2] * corner[:, 1] + bary[:, 2:3] * corner[:, 2]
    maps = np.full((h * w, 2), -10.0, np.float32)
    maps[pix] = uva[:, :2] - 0.5  # continuous pixel coords -> remap's integer-centre coords
    tex = cv2.remap(scene.texture_u8, maps.reshape(h, w, 2), None, interpolation=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT, borderValue=0).reshape(-1, 4)
    textured = mesh.triangle_textured[tri]
    alpha = np.zeros(h * w, np.float32)
    alpha[pix] = uva[:, 2] * np.where(textured, tex[pix, 3] * (1.0 / 255.0), 1.0)
    rgb = np.ascontiguousarray(tex[:, :3])
    flat_pix = pix[~textured]
    rgb[flat_pix] = mesh.triangle_color_u8[tri[~textured]]
    return rgb.reshape(h, w, 3), alpha.reshape(h, w), box


def render_frame(scene: Scene, weights: dict[str, float], rotation: np.ndarray, translation: np.ndarray
                 ) -> np.ndarray:
    """RGB uint8 frame [H,W,3] of the subject with expression ``weights`` at pose (R, t)."""
    return render_frame_and_mask(scene, weights, rotation, translation)[0]


def render_frame_and_mask(scene: Scene, weights: dict[str, float], rotation: np.ndarray,
                          translation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The frame and the head's mask [H,W] bool (face, hair, ears, neck: alpha > 0.5)."""
    verts = to_camera(deform(scene.mesh, weights), rotation, translation)
    rgb, alpha, box = render_head(scene, verts)
    out = scene.plate_u8.copy()
    out[box] = cv2.blendLinear(rgb, out[box], alpha, 1.0 - alpha)
    mask = np.zeros(out.shape[:2], bool)
    mask[box] = alpha > 0.5
    return out, mask


def head_coverage(scene: Scene, vertices_cam: np.ndarray) -> np.ndarray:
    """[H,W] alpha of the head alone over the full frame."""
    _, alpha, box = render_head(scene, vertices_cam)
    full = np.zeros((scene.intrinsics.height, scene.intrinsics.width), np.float32)
    full[box] = alpha
    return full


def build_plate(image: np.ndarray, person: np.ndarray, head_alpha: np.ndarray, neck_keep: np.ndarray) -> np.ndarray:
    """Photo with the head region inpainted, float32 [H,W,3] in [0,1].

    ``head_alpha`` is the head's coverage at the photo pose; ``neck_keep`` marks
    pixels (shoulders, collar) that stay from the photo even if covered.
    """
    region = ((head_alpha > 0.02) | ((person > 0.3) & _near(head_alpha > 0.02, 9))) & ~neck_keep
    region = cv2.dilate(region.astype(np.uint8), np.ones((7, 7), np.uint8))
    filled = cv2.inpaint(image, region, 6, cv2.INPAINT_TELEA)
    filled = cv2.GaussianBlur(filled, (0, 0), 1.0) * (region[..., None] > 0) + filled * (region[..., None] == 0)
    return filled.astype(np.float32) / 255.0


def _near(mask: np.ndarray, pixels: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)) > 0
