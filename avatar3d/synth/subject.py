"""Assemble the synthetic subject's scene from a photo: camera, rigged head, plate."""
from __future__ import annotations

import numpy as np

from avatar3d.synth.camera import FLIP, Intrinsics
from avatar3d.synth.head_mesh import build_head_mesh
from avatar3d.synth.photo import SourcePhoto
from avatar3d.synth.rig import deform, to_camera
from avatar3d.synth.scene import Scene, build_plate, head_coverage


def make_intrinsics(size: int, focal_factor: float) -> Intrinsics:
    """Square image, principal point at the centre, focal = ``focal_factor`` × size."""
    f = focal_factor * size
    return Intrinsics(fx=f, fy=f, cx=size / 2.0, cy=size / 2.0, width=size, height=size)


def build_scene(source: SourcePhoto, size: int, focal_factor: float = 1.2, depth_scale: float = 1.0) -> Scene:
    """Rigged head + plate for ``source`` (already cropped to ``size``)."""
    intr = make_intrinsics(size, focal_factor)
    mesh = build_head_mesh(source, intr, depth_scale)
    person = np.clip(source.person * 255.0 + 0.5, 0, 255).astype(np.uint8)
    texture = np.ascontiguousarray(np.concatenate([source.image, person[..., None]], axis=2))
    scene = Scene(mesh=mesh, intrinsics=intr, texture_u8=texture, plate=np.zeros((size, size, 3), np.float32), plate_u8=np.zeros((size, size, 3), np.uint8),
                  rest_translation=mesh.photo_translation.copy())
    photo_verts = to_camera(deform(mesh, {}, closed=False), mesh.photo_rotation, mesh.photo_translation)
    alpha = head_coverage(scene, photo_verts)
    neck = photo_verts[mesh.n_face:][mesh.alpha[mesh.n_face:] < 0.7]
    rows = np.arange(size)[:, None] * np.ones((1, size))
    if len(neck):
        feather_y = np.median(intr.project(neck)[:, 1])
        keep = rows > feather_y
    else:
        keep = np.zeros((size, size), bool)
    scene.set_plate(build_plate(source.image, source.person, alpha, keep))
    return scene


def rest_rotation() -> np.ndarray:
    """Canonical -> camera rotation of the frontal rest pose."""
    return FLIP.copy()
