"""Scorers: turn collected boundary states into span importance (miprun.scores.SpanScores)."""
