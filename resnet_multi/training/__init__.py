"""Training: the loop with checkpoints and resume, and the datasets it reads."""
