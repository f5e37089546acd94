"""Synthetic nuclei: the shape prior that training's mask domain uses, and realistic test slides."""
