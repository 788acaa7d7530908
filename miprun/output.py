"""Writing results without destroying data: everything goes to a temporary directory beside the
target and is moved into place only when complete."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from miprun.errors import MiprunError


def check_output(path: Path, *, overwrite: bool) -> None:
    """Fail early when ``path`` exists and is not an empty directory (unless ``overwrite``)."""
    if not path.exists():
        return
    if path.is_file():
        raise MiprunError(f"output '{path}' is a file; choose a directory path with --output")
    if any(path.iterdir()) and not overwrite:
        raise MiprunError(f"output directory '{path}' is not empty; choose another --output or pass --overwrite")


def write_atomically(path: Path, fill: Callable[[Path], None], *, overwrite: bool) -> Path:
    """Create directory ``path`` by calling ``fill(tmp_dir)`` on a temporary sibling, then moving it
    into place. A failure leaves the previous state untouched; with ``overwrite`` the old directory
    is removed only after the new one is complete."""
    check_output(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        fill(staging)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
            path.rename(old / "previous")
        staging.rename(path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


REPORT_NAME = "miprun_report.json"


def save_checkpoint(model: Any, tokenizer: Any, path: Path, report: dict[str, Any], *, overwrite: bool = False) -> Path:
    """Save ``model`` and ``tokenizer`` with ``save_pretrained`` and ``report`` as
    ``miprun_report.json``, atomically, into ``path``."""

    def fill(tmp: Path) -> None:
        start = time.perf_counter()
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        report.setdefault("timings", {})["save"] = round(time.perf_counter() - start, 4)
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")

    return write_atomically(path, fill, overwrite=overwrite)


def load_report(path: Path) -> dict[str, Any]:
    """Read a run report from a checkpoint directory or a report file."""
    file = path / REPORT_NAME if path.is_dir() else path
    if not file.exists():
        raise MiprunError(f"no miprun report at '{file}'; pass a directory written by 'miprun run' or its {REPORT_NAME}")
    return json.loads(file.read_text(encoding="utf-8"))
