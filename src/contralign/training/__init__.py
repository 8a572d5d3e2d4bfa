"""Training: config, task, loop, optimisation and checkpoints."""
