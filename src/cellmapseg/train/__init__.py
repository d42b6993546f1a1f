"""Training: DDP loop, schedule, checkpoints and resume (one run per model config)."""
