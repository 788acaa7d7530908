"""Collectors: run the model on calibration tokens and capture what the scorers need."""
