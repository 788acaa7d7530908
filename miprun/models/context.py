"""The longest sequence a model was built for, read from its config."""

from __future__ import annotations

from typing import Any

CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")
"""Config fields that hold the context length, by architecture family."""


def context_length(model: Any) -> int | None:
    """The model's context length in tokens from its config, None when the config does not say."""
    config = getattr(model, "config", None)
    for field in CONTEXT_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
