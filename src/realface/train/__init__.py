"""One training engine shared by pretraining and fine-tuning: distributed setup, schedules, checkpoints."""
