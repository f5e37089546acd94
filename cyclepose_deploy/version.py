"""The package version: a leaf every stage may read (manifest, BioImage Model Zoo package, --version);
pyproject.toml reads it from here too."""

__version__ = "0.1.0"
