"""Hook implementations of the miprun-cka plugin (found through the ``miprun`` entry point)."""

from __future__ import annotations

from miprun import hookimpl


@hookimpl
def miprun_register_scorers(register):
    """Register the ``linear-cka`` scorer."""
    register(
        "linear-cka",
        "miprun_cka.scorer:LinearCKAScorer",
        description="Linear CKA between block input and output (high = redundant); plugin example",
    )
