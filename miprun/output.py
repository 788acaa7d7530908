"""Writing results without destroying data: everything goes to a temporary directory beside the
target and is moved into place only when complete."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from miprun.errors import MiprunError


def _uncreatable(path: Path) -> str | None:
    """Why ``path`` (absent) could never be created, or None: its nearest existing ancestor is a
    file, or a directory that refuses new files — tried with a temporary file, since ``os.access``
    says yes to root on read-only and virtual file systems."""
    ancestor = path.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"'{ancestor}' is a file, not a directory"
    try:
        with tempfile.NamedTemporaryFile(dir=ancestor, prefix=".miprun-probe-"):
            pass
    except OSError as exc:
        return f"'{ancestor}' does not accept new files ({exc.strerror or exc})"
    return None


def check_output(path: Path, *, overwrite: bool, marker: str | None = None) -> None:
    """Fail early — before any work — when ``path`` exists and is not an empty directory (unless
    ``overwrite``; with a ``marker`` file name, ``overwrite`` replaces only a directory holding that
    file — a previous output of the same kind, never a directory that merely happens to be named),
    or when it can never be created (:func:`_uncreatable`)."""
    if not path.exists():
        reason = _uncreatable(path)
        if reason is not None:
            raise MiprunError(f"output '{path}' cannot be created: {reason}; choose another --output")
        return
    if path.is_file():
        raise MiprunError(f"output '{path}' is a file; choose a directory path with --output")
    if not any(path.iterdir()):
        return
    if not overwrite:
        raise MiprunError(f"output directory '{path}' is not empty; choose another --output or pass --overwrite")
    if marker is not None and not (path / marker).is_file():
        raise MiprunError(f"output directory '{path}' is not empty and holds no {marker}: --overwrite replaces only "
                          f"a previous miprun output; choose another --output, or empty the directory yourself")


def check_apart_from_source(path: Path, sources: list[Path]) -> None:
    """Refuse an output that is one of the ``sources`` a run reads (:func:`~miprun.models.loading.source_locations`)
    or a directory holding one: writing it (with ``--overwrite``) would replace the model being pruned."""
    target = path.expanduser().resolve()
    for source in sources:
        source = source.expanduser().resolve()
        if target == source or target in source.parents:
            what = "is" if target == source else "holds"
            raise MiprunError(f"output '{path}' {what} the source model's files ('{source}'), which a run never "
                              f"replaces, --overwrite or not; choose another --output")


def check_checkpoint_output(path: Path, *, overwrite: bool, sources: list[Path]) -> None:
    """Everything a checkpoint directory ``path`` is refused for before a run writes it: being or
    holding the ``sources`` the run reads (:func:`check_apart_from_source`), and what
    :func:`check_output` refuses, ``--overwrite`` replacing only a previous miprun output."""
    check_apart_from_source(path, sources)
    check_output(path, overwrite=overwrite, marker=REPORT_NAME)


def check_file_output(path: Path, flag: str, sources: Sequence[Path] = ()) -> None:
    """Fail before any work when the file ``path`` that option ``flag`` names could never be
    written: it is a directory, or it is absent and cannot be created (:func:`_uncreatable`); or
    when it would replace one of the files of the ``sources`` the run reads
    (:func:`~miprun.models.loading.source_locations`) — ``--json ckpt/config.json`` would replace
    the evaluated model's config. A new file beside them (``--json ckpt/eval.json``) is allowed."""
    target = path.expanduser().resolve()
    for source in sources:
        source = source.expanduser().resolve()
        if target == source or (target.exists() and source in target.parents):
            raise MiprunError(f"{flag} '{path}' would replace a file of the source model ('{source}'), which a "
                              f"run never changes; choose a new file name or a path outside it")
    if path.is_dir():
        raise MiprunError(f"{flag} '{path}' is a directory; name a file")
    reason = None if path.exists() else _uncreatable(path)
    if reason is None and path.exists() and not os.access(path, os.W_OK):
        reason = "it is read-only"
    if reason is not None:
        raise MiprunError(f"{flag} '{path}' cannot be written: {reason}; choose another path")


def _usual_mode(path: Path, *, directory: bool) -> None:
    """Give ``path`` the permissions a plainly created file or directory would have (the process's
    umask applied to 0o666 / 0o777): ``tempfile`` creates its staging paths private (0o600 / 0o700),
    and the rename into place would keep that — a checkpoint other users could not read."""
    path.chmod((0o777 if directory else 0o666) & ~_umask())


def _umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux), since
    setting it, even for an instant, affects files other threads create meanwhile."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_file_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """Write the file ``path`` by calling ``write(tmp)`` on a temporary sibling (its parent
    directories created first) and renaming it into place, so that a reader never sees half a file
    and a failure leaves the previous one; a failed write is a one-line :class:`MiprunError`."""
    staging: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-", suffix=path.suffix)
        os.close(handle)
        staging = Path(name)
        write(staging)
        _usual_mode(staging, directory=False)
        os.replace(staging, path)
        staging = None
    except OSError as exc:
        raise MiprunError(f"cannot write '{path}': {exc.strerror or exc}; nothing was written — check the path and "
                          f"its permissions") from None
    finally:
        if staging is not None:
            staging.unlink(missing_ok=True)
    return path


def write_text_atomically(path: Path, text: str) -> Path:
    """:func:`write_file_atomically` for UTF-8 ``text``."""
    return write_file_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_atomically(path: Path, fill: Callable[[Path], None], *, overwrite: bool, marker: str | None = None) -> Path:
    """Create directory ``path`` by calling ``fill(tmp_dir)`` on a temporary sibling, then moving it
    into place. A failure leaves the previous state untouched; with ``overwrite`` the old directory
    (one holding ``marker``, where given: :func:`check_output`) is removed only after the new one is
    complete."""
    check_output(path, overwrite=overwrite, marker=marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
        fill(staging)
        _usual_mode(staging, directory=True)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
            path.rename(old / "previous")
        staging.rename(path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except Exception as exc:
        _discard_staging(path)
        failure = _write_failure(exc)
        if failure is None:
            raise
        number, text = failure
        hint = "free some space or choose another --output" if number in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else \
            "check the path and its permissions"
        raise MiprunError(f"cannot write '{path}': {text}; nothing was written — {hint}") from None
    except BaseException:
        _discard_staging(path)
        raise
    return path


def _discard_staging(path: Path) -> None:
    """Remove every temporary sibling of ``path`` (``.NAME.tmp-*``): this process holds the output's
    lock (:func:`output_lock`), so any of them is its own — also one an interruption left between
    its creation and the moment its name was known."""
    for staging in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(staging, ignore_errors=True)


def _write_failure(exc: Exception) -> tuple[int | None, str] | None:
    """(errno, text) when ``exc`` is a failed write — an ``OSError``, or a library's wrapper of one
    (safetensors reports ``I/O error: … (os error N)``) — else None."""
    if isinstance(exc, OSError):
        return exc.errno, exc.strerror or str(exc)
    found = re.search(r"I/O error: (.*?) \(os error (\d+)\)", str(exc))
    return (int(found.group(2)), found.group(1)) if found else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def output_lock(path: Path) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside ``path`` for the duration of a run that will write ``path``:
    a second run for the same output is refused while the first (a live process) holds it; a lock
    left by a process that no longer exists is taken over. The lock, and a parent directory the
    lock had to create, are removed at the end, however the run ends."""
    created = []
    for parent in reversed(path.parents):
        if not parent.exists():
            created.append(parent)
    lock = path.parent / f".{path.name}.lock"
    for attempt in (1, 2):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and _alive(holder) and holder != os.getpid():
                raise MiprunError(f"another miprun run (process {holder}) is writing '{path}'; wait for it to "
                                  f"finish or choose another --output") from None
            if attempt == 2:
                raise MiprunError(f"cannot take the lock {lock}; remove it if no miprun run is writing '{path}'") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
        except OSError as exc:  # a parent that refuses new files (read-only or virtual file system)
            raise MiprunError(f"output '{path}' cannot be written ({exc.strerror or exc}); choose another --output") from None
    with os.fdopen(descriptor, "w") as handle:
        handle.write(str(os.getpid()))
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        for parent in reversed(created):
            try:
                parent.rmdir()  # only if the run left it empty
            except OSError:
                break


REPORT_NAME = "miprun_report.json"


def save_checkpoint(model: Any, tokenizer: Any, path: Path, report: dict[str, Any], *, overwrite: bool = False) -> Path:
    """Save ``model`` (a layer-wise one shard by shard) and ``tokenizer`` with ``save_pretrained``, ``report`` as
    ``miprun_report.json`` and the model card (:mod:`miprun.model_card`) as ``README.md``,
    atomically, into ``path`` — after checking that the config saved with it rebuilds its
    parameters (:func:`~miprun.models.rebuild.check_rebuilds`; nothing is written otherwise)."""
    from miprun.model_card import model_card  # here, not at import: the CLI starts without torch and the hub
    from miprun.models.layerwise import layerwise_loader
    from miprun.models.rebuild import check_rebuilds

    check_rebuilds(model)

    def fill(tmp: Path) -> None:
        start = time.perf_counter()
        loader = layerwise_loader(model)
        (loader or model).save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        report.setdefault("timings", {})["save"] = round(time.perf_counter() - start, 4)
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        model_card(report).save(tmp / "README.md")

    return write_atomically(path, fill, overwrite=overwrite, marker=REPORT_NAME)


def load_report(path: Path) -> dict[str, Any]:
    """Read a run report from a checkpoint directory or a report file."""
    file = path / REPORT_NAME if path.is_dir() else path
    if not file.is_file():
        raise MiprunError(f"no miprun report at '{file}'; pass a directory written by 'miprun run' or its {REPORT_NAME}")
    try:
        report = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MiprunError(f"'{file}' is not a miprun report ({type(exc).__name__}: {exc}); pass the "
                          f"{REPORT_NAME} that 'miprun run' wrote") from None
    if not isinstance(report, dict):
        raise MiprunError(f"'{file}' is not a miprun report (a JSON object was expected)")
    return report
