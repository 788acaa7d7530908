"""Mutual-information estimators: one module per estimator, one protocol (miprun.strategies.Estimator)."""
