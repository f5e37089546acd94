"""cyclepose-deploy: annotation-free nuclei segmentation, from training to tiled deployment."""

__version__ = "0.1.0"
