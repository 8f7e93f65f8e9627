"""Evaluation: metrics, frame-to-video aggregation, decision thresholds and calibration (pure functions)."""
