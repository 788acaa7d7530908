"""Command-line arguments every benchmark shares: the model, the calibration sample, the depth."""

from __future__ import annotations

import argparse


def add_run_arguments(parser: argparse.ArgumentParser, *, prune: int | str = 6,
                      calib_help: str = "calibration source") -> None:
    """``--model``, ``--calib``, ``--num-samples``, ``--seq-len`` and ``--prune`` (an int, or a
    comma list when ``prune`` is a string), with miprun run's defaults."""
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--calib", default="wikitext2", help=calib_help)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--prune", type=type(prune), default=prune,
                        help="blocks to remove" + (" (comma list)" if isinstance(prune, str) else ""))
