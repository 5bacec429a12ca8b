"""The avatar API: a trained avatar as a typed bundle and a renderer, apart from training.

* :mod:`avatar3d.avatar.bundle` - ``AvatarBundle``: what an ``avatar.pt`` holds (backend, weights,
  subject reference, refined poses, tracked motion), its save / load and format-version checks.
* :mod:`avatar3d.avatar.base` - ``Avatar``: the interface render, eval and export call
  (``render_frame``, ``render_view``, ``render_subject_frame``), one implementation per backend.
* :mod:`avatar3d.avatar.nerf_avatar` - the NeRF backend's implementation (``NerfAvatar``).
* :mod:`avatar3d.avatar.loading` - ``load_avatar``: a file -> the backend's ``Avatar``.
"""
