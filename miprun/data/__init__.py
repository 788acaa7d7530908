"""Calibration and evaluation text: local data directory first, Hugging Face datasets otherwise."""
