"""Rendering a trained avatar to video."""
