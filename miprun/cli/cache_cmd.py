"""``miprun cache``: what miprun keeps in its cache directory, and clearing converted GGUF copies."""

from __future__ import annotations

from typing import Annotated

import typer

from miprun.cli.console import err, out, print_json


def cache(
    clear_gguf: Annotated[bool, typer.Option("--clear-gguf", help="Remove the de-quantised copies of .gguf files (re-made on next use)")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the listing as JSON on stdout")] = False,
) -> None:
    """List the cache ($MIPRUN_CACHE_DIR, default ~/.cache/miprun): converted .gguf checkpoints by content hash."""
    from miprun.models.embedded import cache_dir
    from miprun.models.gguf_cache import cached_conversions, clear_conversions

    root = cache_dir()
    if clear_gguf:
        freed = clear_conversions(root)
        err.print(f"removed the converted .gguf checkpoints under {root} ({freed / 2**20:.1f} MiB)")
        return
    rows = cached_conversions(root)
    if json_output:
        print_json({"cache": str(root), "gguf_converted": rows})
        return
    out.print(f"cache: {root}")
    for row in rows:
        out.print(f"  {row['sha256'][:16]}  {row['bytes'] / 2**20:9.1f} MiB  from {row['gguf']}", markup=False, highlight=False)
    if not rows:
        out.print("  no converted .gguf checkpoints")
