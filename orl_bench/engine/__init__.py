"""Training loop, distributed setup, optimisers and schedules, checkpoints."""
