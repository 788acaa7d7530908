"""Selectors: choose which blocks to remove from span importance."""
