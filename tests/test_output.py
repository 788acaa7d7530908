"""Outputs are written to a temporary path and moved into place; nothing is destroyed on failure."""

from __future__ import annotations

import pytest

from miprun.errors import MiprunError
from miprun.output import write_atomically


def test_complete_directory_appears_only_at_the_end(tmp_path):
    target = tmp_path / "out"

    def fill(tmp):
        assert not target.exists()
        (tmp / "a.txt").write_text("new")

    write_atomically(target, fill, overwrite=False)
    assert (target / "a.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_non_empty_target_is_refused_and_kept(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(MiprunError, match="not empty; choose another --output or pass --overwrite"):
        write_atomically(target, lambda tmp: None, overwrite=False)
    assert (target / "keep.txt").read_text() == "old"


def test_failure_while_writing_keeps_the_old_directory(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")

    def fill(tmp):
        (tmp / "partial").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomically(target, fill, overwrite=True)
    assert (target / "keep.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_overwrite_replaces_only_when_complete(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    write_atomically(target, lambda tmp: (tmp / "new.txt").write_text("new"), overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_config_that_would_not_rebuild_the_model_is_refused_before_anything_is_written(tmp_path):
    """A registration that misses a config field (here Qwen3-MoE's list of dense layers, left
    unnumbered) would save a checkpoint that stock transformers loads with tensors missing and
    freshly initialised: saving refuses it in one line, and writes nothing."""
    from dataclasses import replace

    from conftest import build_tokenizer, tiny_config
    from transformers import AutoModelForCausalLM

    from miprun.contracts import Selection
    from miprun.models.adapters import adapter_for
    from miprun.models.rebuild import check_rebuilds
    from miprun.output import save_checkpoint
    from miprun.surgeons.remove_blocks import RemoveBlocksSurgeon

    config = tiny_config("qwen3_moe", len(build_tokenizer()))
    config.mlp_only_layers = [0, 2]
    model = AutoModelForCausalLM.from_config(config)
    adapter = adapter_for(model)
    check_rebuilds(model)
    adapter.spec = replace(adapter.spec, layer_index_fields=())  # the field the registration needs
    RemoveBlocksSurgeon().apply(model, adapter, Selection([1]))
    with pytest.raises(MiprunError, match=r"config would not rebuild it — model\.layers\.1\.mlp\.down_proj\.weight "
                                          r"\(32, 64\) here, absent from the config.*nothing was saved"):
        save_checkpoint(model, None, tmp_path / "out", {})
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self"), reason="needs Linux's /proc, which refuses new files")
def test_an_output_whose_directory_refuses_new_files_is_one_line():
    """``os.access`` calls /proc writable for root, but no file can be made there: the run's lock
    says so in one line instead of an OSError traceback."""
    from pathlib import Path

    from miprun.output import output_lock

    for target in (Path("/proc/miprun-out"), Path("/proc/miprun-new/out")):
        with pytest.raises(MiprunError, match=r"cannot be written \(.*\); choose another --output"):
            with output_lock(target):
                pass


def test_a_file_output_is_written_whole_or_not_at_all(tmp_path):
    """Reports and pictures go through a temporary sibling: the parents are created, the previous
    file survives a failed write, and no temporary file is left either way."""
    from miprun.output import write_file_atomically, write_text_atomically

    target = tmp_path / "new" / "dir" / "report.json"
    write_text_atomically(target, "first")
    assert target.read_text() == "first"

    def fail(path):
        path.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(MiprunError, match=r"cannot write '.*report.json': No space left on device; nothing was written"):
        write_file_atomically(target, fail)
    assert target.read_text() == "first" and sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


def test_a_file_output_that_can_never_be_written_is_refused(tmp_path):
    from miprun.output import check_file_output

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(MiprunError, match=rf"--json '{blocker}/sub/r.json' cannot be written: '{blocker}' is a file, not a directory"):
        check_file_output(blocker / "sub" / "r.json", "--json")
    with pytest.raises(MiprunError, match="is a directory; name a file"):
        check_file_output(tmp_path, "--markdown")
    check_file_output(tmp_path / "absent" / "r.json", "--json")  # creatable: no error, nothing created
    assert not (tmp_path / "absent").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_outputs_get_the_permissions_of_plainly_created_paths(tmp_path):
    """Staging paths are created private by ``tempfile``; what is moved into place has the usual
    umask-based mode, so that a checkpoint or report written for others can be read by them."""
    import os

    from miprun.output import write_text_atomically

    mask = os.umask(0o022)
    try:
        directory = write_atomically(tmp_path / "ckpt", lambda tmp: (tmp / "a.txt").write_text("x"), overwrite=False)
        report = write_text_atomically(tmp_path / "r.json", "{}")
    finally:
        os.umask(mask)
    assert directory.stat().st_mode & 0o777 == 0o755 and report.stat().st_mode & 0o777 == 0o644
