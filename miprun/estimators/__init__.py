"""Mutual-information estimators: one module per estimator, protocols in miprun.contracts (Estimator, PairwiseEstimator)."""
