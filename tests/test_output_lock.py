"""Two runs on one output: the second is refused while the first holds the lock."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import build_tiny

import miprun
from miprun.errors import MiprunError
from miprun.output import output_lock


def leftovers(directory):
    """Temporary, old-copy and lock entries a run may have left in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(tmp_path, text_file):
    out = tmp_path / "out"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".out.lock").write_text(str(sleeper.pid))  # a live run holds the output
        with pytest.raises(MiprunError, match=rf"another miprun run \(process {sleeper.pid}\) is writing"):
            miprun.prune(build_tiny("llama", layers=3), n=1, calib=str(text_file), num_samples=2, seq_len=16,
                         method="shortgpt", output=out)
        assert not out.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # its process is gone: the lock is stale, taken over, and removed at the end
    miprun.prune(build_tiny("llama", layers=3), n=1, calib=str(text_file), num_samples=2, seq_len=16,
                 method="shortgpt", output=out)
    assert (out / "config.json").exists() and leftovers(tmp_path) == []


def test_the_lock_removes_the_parent_directories_it_created_and_only_those(tmp_path):
    target = tmp_path / "a" / "b" / "out"
    with output_lock(target):
        assert (tmp_path / "a" / "b" / ".out.lock").read_text() == str(os.getpid())
        with output_lock(target):  # the same process may nest (pipeline inside a larger job)
            pass
    assert not (tmp_path / "a").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    with output_lock(kept / "out"):
        pass
    assert kept.exists() and list(kept.iterdir()) == []
