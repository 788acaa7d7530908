"""SIGINT and SIGTERM at any stage, save included: nothing half made is left, one line says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest


def leftovers(directory):
    """Temporary, old-copy and lock entries a run may have left in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def _start_run(tmp_path, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "miprun.cli.main", "run", "--prune", "6", "--num-samples", "8",
                             "--seq-len", "128", "--output", str(tmp_path / "out"), *extra],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            # as from a terminal: a background job of a script inherits SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(process, text: str, limit: float = 600.0) -> list[str]:
    lines, start = [], time.time()
    while time.time() - start < limit:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"never saw {text!r}: {''.join(lines)[-1500:]}")


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_run_killed_while_scoring_leaves_nothing_and_says_so(tmp_path, sig):
    process = _start_run(tmp_path)
    _wait_for(process, "estimate started")  # non-terminal stderr: one line per stage
    process.send_signal(sig)
    rest = process.communicate(timeout=120)[1]
    assert process.returncode == 130, rest[-1500:]
    assert rest.strip().splitlines()[-1].startswith("miprun: interrupted; nothing was written")
    assert "Traceback" not in rest
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@pytest.mark.integration
def test_a_run_killed_while_saving_leaves_the_whole_checkpoint_or_nothing(tmp_path):
    process = _start_run(tmp_path, "--method", "shortgpt")
    _wait_for(process, "save started")
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert process.returncode in (0, 130)
    out = tmp_path / "out"
    if process.returncode == 0:  # the save won the race: the checkpoint is complete
        assert (out / "miprun_report.json").exists() and (out / "config.json").exists()
    else:
        assert not out.exists()
    assert leftovers(tmp_path) == []
