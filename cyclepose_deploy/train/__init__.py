"""CyclePose training: synthetic mask domain, unlabeled image crops, the two cycles, checkpoints."""
