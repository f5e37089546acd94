"""Torch modules of CyclePose: the segmenter S, the renderer G and the PatchGAN discriminators."""
