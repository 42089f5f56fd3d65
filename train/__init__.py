"""The shared training loop: configs, data, optimizer, checkpoints, metrics."""
