"""Learning: the training loop, optimisers, checkpoints and data-parallel training."""
