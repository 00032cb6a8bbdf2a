"""Training: the greedy schedule, callbacks, checkpoints and modes."""
