"""Learning: the training loop, optimizers, checkpoints and data-parallel training."""
