"""Surgeons: edit a model in place to remove the selected parts."""
