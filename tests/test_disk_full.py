"""A full disk during save: one error line, nothing half written."""

from __future__ import annotations

import subprocess
import sys

from conftest import build_tiny


def leftovers(directory):
    """Temporary, old-copy and lock entries a run may have left in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_a_full_disk_during_save_is_one_error_line_and_leaves_nothing(tmp_path):
    model_dir = tmp_path / "tiny"
    loaded = build_tiny("llama", layers=3)
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(["the city of the world"] * 400))
    runs = tmp_path / "runs"
    runs.mkdir()
    # a file-size limit makes writing the weights fail the way a full disk does (EFBIG)
    script = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000)); "
              "from miprun.cli.main import main; sys.argv = sys.argv[1:]; main()")
    done = subprocess.run([sys.executable, "-c", script, "miprun", "run", "--model", str(model_dir), "--calib", str(calib),
                           "--num-samples", "2", "--seq-len", "16", "--prune", "1", "--method", "shortgpt",
                           "--output", str(runs / "out")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-1500:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("miprun: error: cannot write") and "nothing was written" in last
    assert "Traceback" not in done.stderr
    assert list(runs.iterdir()) == []  # no output, no temporary directory, no lock
