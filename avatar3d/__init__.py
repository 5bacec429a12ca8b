"""avatar3d: audio-driven, 3D-consistent talking-head avatars from a few minutes of video."""

__version__ = "0.1.0"
