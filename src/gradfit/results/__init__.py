"""Metrics, the exact check, uncertainty, plots, the run directory, checkpoints, evaluate/predict, compare."""
