"""Calibration of a benchmark: what its features, update rules and zoom references let a model learn."""
