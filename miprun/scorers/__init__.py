"""Scorers: turn collected inputs (or the model) into importance — span scores or neuron scores (miprun.contracts)."""
