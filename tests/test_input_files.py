"""Input files and values a hostile user passes: one clear error, through the real CLI, nothing written."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny
from typer.testing import CliRunner

import miprun
from miprun.cli.main import app
from miprun.errors import MiprunError
from miprun.models.loading import available_devices, check_device_map


@pytest.fixture
def tiny_dir(tmp_path):
    loaded = build_tiny("llama", layers=3)
    loaded.model.save_pretrained(tmp_path / "tiny")
    loaded.tokenizer.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output.strip().splitlines()[-1]


def test_a_binary_calibration_file_on_the_command_line_names_the_file_and_the_fix(tmp_path, tiny_dir):
    binary = tmp_path / "calib.txt"
    binary.write_bytes(bytes(range(128, 256)) * 20)
    code, line = cli("run", "--model", str(tiny_dir), "--calib", str(binary), "--seq-len", "16",
                     "--output", str(tmp_path / "out"))
    assert code == 2 and line == (f"miprun: error: calibration file '{binary}' is not UTF-8 text (byte 0 cannot be "
                                  f"decoded); pass a text or JSON-lines file")
    assert not (tmp_path / "out").exists()


def test_seq_len_beyond_the_context_on_the_command_line_is_refused(tmp_path, tiny_dir, text_file):
    code, line = cli("run", "--model", str(tiny_dir), "--calib", str(text_file), "--seq-len", "100000",
                     "--output", str(tmp_path / "out"))
    assert code == 2 and "--seq-len 100000 is longer than the model's context (128 tokens)" in line


def test_device_map_cuda_without_cuda_on_the_command_line(tmp_path, tiny_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, line = cli("run", "--model", str(tiny_dir), "--device-map", "cuda", "--output", str(tmp_path / "out"))
    assert code == 2 and "device 'cuda' is not available on this machine (devices here: cpu" in line


def test_a_missing_device_named_with_device_is_refused_before_loading_with_that_flags_fix(tmp_path):
    """``--device`` names one device: its errors say ``--device`` (not ``--device-map`` and its
    placement words), and come before any model is loaded (the model path here does not exist)."""
    absent = str(tmp_path / "no-model")
    code, line = cli("run", "--model", absent, "--device", "gpu-please", "--output", str(tmp_path / "out"))
    assert code == 2 and line == "miprun: error: --device 'gpu-please' is not a device; devices here: cpu" + \
        "".join(f", {d}" for d in available_devices()[1:])
    code, line = cli("run", "--model", absent, "--device", "meta", "--output", str(tmp_path / "out"))
    assert code == 2 and line.startswith("miprun: error: device 'meta' is not available on this machine") and \
        line.endswith("; pass --device cpu or one of those")


def test_a_ratio_that_rounds_to_every_unit_names_the_ratio(tmp_path, tiny_dir, text_file):
    code, line = cli("run", "--model", str(tiny_dir), "--calib", str(text_file), "--seq-len", "16",
                     "--granularity", "neuron", "--ratio", "0.999", "--output", str(tmp_path / "out"))
    width = build_tiny("llama", layers=3).model.config.intermediate_size
    assert code == 2 and line == (f"miprun: error: --ratio 0.999 ({width} of {width}) would remove every FFN neuron: "
                                  f"layers have {width}; choose a --ratio below {(width - 0.5) / width:.4g}")
    assert not (tmp_path / "out").exists()


def test_a_binary_or_nul_calibration_file_is_a_clear_error(tmp_path):
    binary = tmp_path / "calib.txt"
    binary.write_bytes(bytes(range(128, 256)) * 20)
    with pytest.raises(MiprunError, match="is not UTF-8 text"):
        miprun.prune(build_tiny("llama", layers=3), n=1, calib=str(binary), seq_len=16, save=False)
    nul = tmp_path / "nul.txt"
    nul.write_text("words\x00more words " * 100)
    with pytest.raises(MiprunError, match="contains NUL bytes"):
        miprun.prune(build_tiny("llama", layers=3), n=1, calib=str(nul), seq_len=16, save=False)


def test_a_device_map_naming_a_missing_device_lists_the_devices_there_are():
    assert check_device_map("auto") == "auto" and check_device_map({"": "cpu"}) == {"": "cpu"}
    if not torch.cuda.is_available():
        with pytest.raises(MiprunError, match=r"device 'cuda' is not available on this machine \(devices here: cpu"):
            check_device_map("cuda")
    with pytest.raises(MiprunError, match="neither a device nor one of auto"):
        check_device_map("gpu-please")


def test_seq_len_beyond_the_models_context_is_refused(text_file):
    loaded = build_tiny("llama", layers=3)
    limit = loaded.model.config.max_position_embeddings
    with pytest.raises(MiprunError, match=rf"--seq-len {limit + 1} is longer than the model's context \({limit} tokens\)"):
        miprun.prune(loaded, n=1, calib=str(text_file), seq_len=limit + 1, save=False)


def test_a_multimodal_checkpoint_is_pruned_as_its_language_model_and_the_run_says_so(tmp_path, tiny_dir, text_file):
    """A Qwen3.5 checkpoint holds a vision tower beside its language model; AutoModelForCausalLM
    loads the language model alone, so the run says the pruned checkpoint is text-only (a
    checkpoint of one model says nothing)."""
    from conftest import build_tokenizer, tiny_config
    from transformers import AutoConfig, Qwen3_5ForConditionalGeneration

    from miprun.models.loading import load_model

    tokenizer = build_tokenizer()
    config = AutoConfig.for_model("qwen3_5", text_config=tiny_config("qwen3_5_text", len(tokenizer)).to_dict(),
                                  vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                                                 "out_hidden_size": 32})
    torch.manual_seed(0)
    Qwen3_5ForConditionalGeneration(config).save_pretrained(tmp_path / "mm")
    tokenizer.save_pretrained(tmp_path / "mm")
    loaded = load_model(str(tmp_path / "mm"))
    assert loaded.model.config.model_type == "qwen3_5_text" and loaded.source["not_loaded"] == ["vision_config"]
    assert "not_loaded" not in load_model(str(tiny_dir)).source
    result = CliRunner().invoke(app, ["run", "--model", str(tmp_path / "mm"), "--calib", str(text_file), "--prune", "1",
                                      "--seq-len", "16", "--num-samples", "4", "--heal", "none", "--output",
                                      str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "is a multimodal checkpoint; Qwen3_5ForCausalLM loads its language model alone, without vision_config: " \
           "the pruned checkpoint is text-only (qwen3_5_text)" in " ".join(result.output.split())


def test_a_misspelt_embedded_model_name_gets_a_did_you_mean():
    """A name without an organisation is not a hub id anyone publishes: where it is close to an
    embedded name, the one-line error names it (loading it is tried first: it may be cached)."""
    from miprun.models.loading import load_model

    with pytest.raises(MiprunError, match=r"cannot load model 'smollm2-135' \(did you mean 'smollm2-135m'\?\): "):
        load_model("smollm2-135")


def test_a_damaged_checkpoint_is_one_line_naming_what_to_fix(tmp_path, tiny_dir, text_file):
    """A truncated weights file (a download cut short), in memory and layer-wise, and a checkpoint
    without its tokenizer files: one line each, no traceback, nothing written."""
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_dir, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    common = ["--calib", str(text_file), "--prune", "1", "--seq-len", "16", "--output", str(tmp_path / "out")]
    code, line = cli("run", "--model", str(damaged), *common)
    assert code == 2 and line.endswith("a weights file is damaged: re-save or re-download the checkpoint")
    code, line = cli("run", "--model", str(damaged), "--layerwise", *common)
    assert code == 2 and line.startswith(f"miprun: error: weights file '{weights}' cannot be read (")
    untokenized = tmp_path / "untokenized"
    shutil.copytree(tiny_dir, untokenized)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (untokenized / name).unlink()
    code, line = cli("run", "--model", str(untokenized), *common)
    assert code == 2 and "its tokenizer files (tokenizer.json, tokenizer.model or vocabulary files) are missing" in line
    (untokenized / "model.safetensors").unlink()  # weights missing too: named first (the run cannot start without them)
    code, line = cli("run", "--model", str(untokenized), *common)
    assert code == 2 and "has config.json but no weights file (*.safetensors, pytorch_model*.bin)" in line
    code, line = cli("run", "--model", str(tiny_dir), "--calib", str(tmp_path), "--prune", "1", "--seq-len", "16")
    assert code == 2 and line.endswith(f"calibration file '{tmp_path}' is a directory; name one file in it "
                                       f"(.txt, .jsonl, .json, .csv or .parquet)")
    code, line = cli("run", "--model", str(tiny_dir), "--calib", "/dev/null", "--prune", "1", "--seq-len", "16")
    assert code == 2 and line.endswith("calibration file '/dev/null' is not a regular file (a device, pipe or socket); "
                                       "name a text file")
    assert not (tmp_path / "out").exists()


def _files(directory):
    return {path.relative_to(directory): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("where", ["source", "parent"])
def test_an_output_that_is_or_holds_the_source_model_is_refused_even_with_overwrite(tmp_path, tiny_dir, text_file, where):
    """``--output`` naming the model's own directory (or one above it) with ``--overwrite`` replaced
    the model being pruned by its pruned copy: refused in one line, before anything loads, and
    every source file is byte for byte what it was."""
    before = _files(tmp_path)
    target = tiny_dir if where == "source" else tmp_path
    code, line = cli("run", "--model", str(tiny_dir), "--calib", str(text_file), "--seq-len", "16", "--prune", "1",
                     "--output", str(target), "--overwrite")
    verb = "is" if where == "source" else "holds"
    assert code == 2 and line == (f"miprun: error: output '{target}' {verb} the source model's files ('{tiny_dir.resolve()}'), "
                                  f"which a run never replaces, --overwrite or not; choose another --output")
    assert _files(tmp_path) == before


def test_overwrite_replaces_a_previous_output_but_not_a_directory_miprun_did_not_write(tmp_path, tiny_dir, text_file):
    """``--overwrite`` replaces a previous run's output (it holds miprun_report.json); a non-empty
    directory without one (a home or cache directory named by mistake) is refused and kept."""
    args = ["run", "--model", str(tiny_dir), "--calib", str(text_file), "--seq-len", "16", "--num-samples", "4",
            "--prune", "1", "--heal", "none"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    code, line = cli(*args, "--output", str(other), "--overwrite")
    assert code == 2 and line == (f"miprun: error: output directory '{other}' is not empty and holds no miprun_report.json: "
                                  f"--overwrite replaces only a previous miprun output; choose another --output, or "
                                  f"empty the directory yourself")
    assert [p.name for p in other.iterdir()] == ["keep.txt"]
    out = tmp_path / "out"
    assert cli(*args, "--output", str(out))[0] == 0
    (out / "stale.txt").write_text("left by hand")
    assert cli(*args, "--output", str(out), "--overwrite", "--seed", "1")[0] == 0
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "miprun_report.json").read_text())["seed"] == 1


def test_report_and_picture_paths_that_cannot_be_written_are_refused_before_any_work(tmp_path, tiny_dir, text_file):
    """compare, eval and scores write reports and pictures at the end of long runs: a path that can
    never be written (under a file), a directory, a picture suffix matplotlib cannot write, or a
    --plot that one depth cannot draw is one line before the model is loaded (here it does not exist)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    absent = str(tmp_path / "no-model")
    compare = ["compare", "--model", absent, "--methods", "random", "--calib", str(text_file)]
    assert cli(*compare, "--prune", "1", "--json", str(blocker / "r.json")) == (
        2, f"miprun: error: --json '{blocker}/r.json' cannot be written: '{blocker}' is a file, not a directory; choose another path")
    assert cli(*compare, "--prune", "1", "--plot", str(tmp_path / "c.png")) == (
        2, "miprun: error: --plot draws the pruning curve over several --prune values (e.g. --prune 2,4,6); --prune 1 "
           "gives one point: drop --plot or add depths")
    code, line = cli(*compare, "--prune", "1,2", "--plot", str(tmp_path / "c.txt"))
    assert code == 2 and line.startswith(f"miprun: error: --plot '{tmp_path}/c.txt' is not a picture file matplotlib writes")
    assert cli("eval", absent, "--markdown", str(tmp_path)) == (2, f"miprun: error: --markdown '{tmp_path}' is a directory; name a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "calib.txt", "tiny"]


def test_a_report_file_never_replaces_a_file_of_the_model_it_reads(tmp_path, tiny_dir, text_file):
    """``eval MODEL --json MODEL/config.json`` would overwrite the evaluated model's config at the end
    of the run: refused in one line before loading, every source byte unchanged; a new file beside
    the model is allowed (the usual place for its evaluation)."""
    before = {p.name: p.read_bytes() for p in tiny_dir.iterdir()}
    for flag in ("--json", "--markdown"):
        assert cli("eval", str(tiny_dir), flag, str(tiny_dir / "config.json")) == (
            2, f"miprun: error: {flag} '{tiny_dir}/config.json' would replace a file of the source model ('{tiny_dir}'), "
               f"which a run never changes; choose a new file name or a path outside it")
    code, line = cli("compare", "--model", str(tiny_dir), "--methods", "random", "--calib", str(text_file), "--prune", "1",
                     "--json", str(tiny_dir / "model.safetensors"))
    assert code == 2 and "would replace a file of the source model" in line
    assert {p.name: p.read_bytes() for p in tiny_dir.iterdir()} == before
    assert cli("eval", str(tiny_dir), "--ppl", str(text_file), "--max-windows", "1", "--seq-len", "16",
               "--json", str(tiny_dir / "eval.json"))[0] == 0
    assert json.loads((tiny_dir / "eval.json").read_text())["perplexity"]
    assert all((tiny_dir / name).read_bytes() == data for name, data in before.items())


@pytest.mark.parametrize("argument, message", [
    ({"model": 123}, "prune(): model must be a name, a path, a hub id or a LoadedModel, got 123"),
    ({"n": "3"}, "prune(): n must be a whole number or None, got '3'"),
    ({"n": True}, "prune(): n must be a whole number or None, got True"),
    ({"calib": None}, "prune(): calib must be a string or a path, got None"),
    ({"seq_len": "abc"}, "prune(): seq_len must be a whole number, got 'abc'"),
    ({"num_samples": 2.5}, "prune(): num_samples must be a whole number, got 2.5"),
    ({"heal": 123}, "prune(): heal must be a string or None, got 123"),
    ({"options": [1]}, "prune(): options must be a dict or None, got [1]"),
])
def test_the_python_api_refuses_arguments_of_the_wrong_kind_before_loading(tmp_path, argument, message):
    """What Typer types on the command line, ``miprun.prune`` checks itself: one line naming the
    argument, before anything loads (the model path does not exist), never a TypeError mid-run."""
    with pytest.raises(MiprunError) as refused:
        miprun.prune(**{"model": str(tmp_path / "no-model"), "save": False, **argument})
    assert str(refused.value) == message


def test_a_path_object_is_a_calibration_file(tmp_path, text_file):
    loaded = build_tiny("llama", layers=3)
    result = miprun.prune(loaded, n=1, calib=text_file, seq_len=16, num_samples=4, heal_samples=8, save=False, check=False)
    assert result.report["data"]["name"] == str(text_file) and result.report["data"]["kind"] == "file"


@pytest.mark.parametrize("argument, message", [
    ({"prune": [1.5]}, "--prune takes a number or a comma list of numbers, got [1.5]"),
    ({"methods": [5]}, "methods must be a comma list or a list of method names, got [5]"),
    ({"seq_len": "a"}, "compare(): seq_len must be a whole number, got 'a'"),
    ({"ppl": [1]}, "compare(): ppl must be a comma list or a list of strings, got [1]"),
    ({"model": 3.5}, "compare(): model must be a name, a path, a hub id or a LoadedModel, got 3.5"),
])
def test_compare_refuses_arguments_of_the_wrong_kind_before_loading(tmp_path, argument, message):
    from miprun.compare import compare

    with pytest.raises(MiprunError) as refused:
        compare(**{"model": str(tmp_path / "no-model"), "methods": "random", "prune": 1, **argument})
    assert str(refused.value) == message


def test_numpy_integers_are_accepted_and_recorded_as_numbers(tmp_path, text_file):
    """Sizes computed with NumPy are whole numbers too; the report records them as JSON numbers."""
    import numpy as np

    loaded = build_tiny("llama", layers=3)
    result = miprun.prune(loaded, n=np.int64(1), calib=str(text_file), seq_len=np.int32(16), num_samples=np.int64(4),
                          heal_samples=8, save=False, check=False)
    assert result.report["prune"]["requested"] == 1 and type(result.report["data"]["seq_len"]) is int
    assert json.loads(json.dumps(result.report, default=str))["data"]["num_samples"] == 4


def test_windows_that_read_a_short_source_many_times_are_said_once_per_option(tmp_path, text_file):
    """Asking a short text for far more windows than it has tokens draws the same text again and
    again: the run says so, naming the option that sets those windows' number (the selection's
    --num-samples, the healing's --heal-samples), and records the source's size."""
    from miprun.progress import Reporter

    notes = []

    class Notes(Reporter):
        def note(self, line):
            notes.append(line)

    loaded = build_tiny("llama", layers=3)
    tokens = len(loaded.tokenizer(text_file.read_text(), add_special_tokens=False).input_ids)
    many = 4 * tokens // 16
    result = miprun.prune(loaded, n=1, calib=str(text_file), seq_len=16, num_samples=many, heal_samples=8, save=False,
                          check=False, reporter=Notes())
    assert result.report["data"]["source_tokens"] == tokens
    repeated = [line for line in notes if "times each" in line]
    assert len(repeated) == 1 and repeated[0].startswith(f"{many} windows of 16 tokens read the {tokens} tokens of ")
    assert repeated[0].endswith("fewer (--num-samples) would cost less")
