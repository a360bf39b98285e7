"""Training and evaluation engines: train step, optimizer, checkpoints, training and eval loops."""
