"""The quality check every run ends with (miprun.quality): held-out windows, dense vs pruned."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build_tiny, save_tiny
from typer.testing import CliRunner

import miprun
from miprun.cli.main import app
from miprun.probing import Prober
from miprun.quality import check_quality, dense_reference


def test_the_check_compares_dense_and_pruned_loss_on_the_same_windows():
    loaded = build_tiny("llama", layers=4, seed=51)
    windows = torch.randint(4, 80, (4, 16), generator=torch.Generator().manual_seed(52))
    reference = dense_reference(loaded.model, loaded.adapter, windows, {"name": "test"})
    assert reference.loss == Prober(loaded.model, loaded.adapter, windows).loss([])
    record = check_quality(loaded.model, loaded.adapter, reference, suggestion="try X")
    assert record["ratio"] == 1.0 and "warning" not in record
    with torch.no_grad():  # a confidently wrong head: far worse than dense
        loaded.model.get_output_embeddings().weight.mul_(200.0)
    ruined = check_quality(loaded.model, loaded.adapter, reference, suggestion="try X")
    assert ruined["loss_increase_nats"] > 1.0 and ruined["warning"].endswith("try X")
    assert math.isclose(ruined["ratio"], ruined["pruned_perplexity"] / ruined["dense_perplexity"])


def _ffn_calls(adapter):
    """A global hook (not one on the model, which would change what the model is) counting how
    often each block's FFN output module computes: a replayed block's does not."""
    from miprun.models.adapters import ffn_output_modules

    modules = [ffn_output_modules(adapter, i)[0] for i in range(adapter.num_blocks)]
    counts = [0] * len(modules)

    def count(module, args, out):
        for i, candidate in enumerate(modules):
            counts[i] += candidate is module

    return counts, torch.nn.modules.module.register_module_forward_hook(count)


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "gemma3_text"])
def test_later_passes_replay_the_dense_blocks_the_run_left_as_they_were_and_give_the_same_loss(architecture):
    """The dense reference keeps its blocks' outputs; plain removal's loss replays the blocks before
    the first removed one, and after a block is edited in place, a block removed or the embedding
    changed, only the blocks still as they were (and before the change) are replayed — the loss is
    bit for bit the one computed from scratch every time."""
    from miprun.models.adapters import ffn_output_modules

    loaded = build_tiny(architecture, layers=6, seed=56)
    model, adapter = loaded.model, loaded.adapter
    windows = torch.randint(4, 80, (5, 16), generator=torch.Generator().manual_seed(57))
    reference = dense_reference(model, adapter, windows, {"name": "test"})
    assert len(reference.prefix.outputs) == 6
    Prober(model, adapter, windows).loss([0])  # a skipped block learns its class's output format once

    def both(skip):
        counts, handle = _ffn_calls(adapter)
        replayed = Prober(model, adapter, windows).loss(skip, replay=reference.prefix)
        handle.remove()
        assert replayed == Prober(model, adapter, windows).loss(skip)
        return [c > 0 for c in counts]

    assert both([3, 4]) == [False, False, False, False, False, True]  # blocks 0-2 replayed, 3-4 removed
    assert both([]) == [False] * 6  # nothing changed: every block replayed
    with torch.no_grad():
        ffn_output_modules(adapter, 2)[0].weight.mul_(1.5)  # a fit folded into block 2
    assert both([4]) == [False, False, True, True, False, True]
    adapter.keep_blocks([0, 1, 2, 5])  # surgery: what is left of the prefix still replays
    assert both([]) == [False, False, True, True]
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(0.5)  # every block's input changes: nothing replays
    assert both([]) == [True] * 4


def test_the_dense_prefix_keeps_as_many_blocks_as_its_budget_holds():
    from miprun.probing import DensePrefix

    loaded = build_tiny("llama", layers=6, seed=58)
    windows = torch.randint(4, 80, (5, 16), generator=torch.Generator().manual_seed(59))
    per_block = windows.numel() * loaded.adapter.hidden_size * 4  # float32 outputs of one block
    prefix = DensePrefix(budget=2 * per_block + 1)
    loss = Prober(loaded.model, loaded.adapter, windows).loss([], keep=prefix)
    assert len(prefix.outputs) == 2 and sum(t.numel() * 4 for t in prefix.outputs[1]) == per_block
    assert Prober(loaded.model, loaded.adapter, windows).loss([4], replay=prefix) == \
        Prober(loaded.model, loaded.adapter, windows).loss([4])
    assert loss == Prober(loaded.model, loaded.adapter, windows).loss([], replay=prefix)


def test_the_loss_batches_by_the_logits_memory_and_gives_the_loss_of_the_whole_batch(monkeypatch):
    """A large vocabulary takes fewer sequences per batch (their logits within LOGITS_BYTES, at
    least one) and one sequence at a time through the cross-entropy: the same mean loss as the
    cross-entropy of every token at once, in float64, also for the gradient Taylor+ reads."""
    import miprun.probing as probing

    loaded = build_tiny("llama", layers=4, seed=54)
    windows = torch.randint(4, 80, (5, 16), generator=torch.Generator().manual_seed(55))
    with torch.no_grad():
        logits = loaded.model(input_ids=windows).logits.double()
    expected = float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                       windows[:, 1:].reshape(-1)))
    roomy = Prober(loaded.model, loaded.adapter, windows)
    assert roomy._loss_batch_size() == 4 and math.isclose(roomy.loss([]), expected, rel_tol=1e-6)
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(probing, "LOGITS_BYTES", 2 * 16 * vocab * 4)  # two sequences' float32 logits
    assert Prober(loaded.model, loaded.adapter, windows)._loss_batch_size() == 2
    monkeypatch.setattr(probing, "LOGITS_BYTES", 1)
    tight = Prober(loaded.model, loaded.adapter, windows)
    assert tight._loss_batch_size() == 1 and math.isclose(tight.loss([]), expected, rel_tol=1e-6)
    weight = loaded.model.get_output_embeddings().weight
    tight.loss([], backward=True)
    one_at_a_time, weight.grad = weight.grad.clone(), None
    roomy.loss([], backward=True)
    torch.testing.assert_close(one_at_a_time, weight.grad, rtol=1e-5, atol=1e-8)


def test_every_run_reports_the_check_and_warns_when_the_result_is_ruined(tmp_path, text_file, monkeypatch):
    result = miprun.prune(build_tiny("llama", layers=4, seed=53), n=1, calib=str(text_file), num_samples=4,
                          seq_len=16, heal_samples=4, output=tmp_path / "ok")
    quality = result.report["quality"]
    assert quality["windows"] == 8 and quality["seq_len"] == 16 and quality["data"]["seed"] == 1
    assert "check" in result.report["timings"] and "warning" not in quality
    card = (tmp_path / "ok" / "README.md").read_text()
    assert "## Quality check" in card and f"{quality['pruned_perplexity']:.2f}" in card
    assert "pypi.org" not in card  # miprun is not published: no link to a page that does not exist
    monkeypatch.setattr("miprun.quality.RUINED_NATS", -1.0)  # every result counts as ruined
    done = CliRunner().invoke(app, ["run", "--model", str(save_tiny(tmp_path / "tiny", seed=54)), "--calib", str(text_file),
                                    "--seq-len", "16", "--num-samples", "4", "--heal-samples", "4", "--prune", "1",
                                    "--method", "shortgpt", "--output", str(tmp_path / "bad")])
    assert done.exit_code == 0, done.output
    warnings = [line for line in done.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "far worse than dense" in warnings[0] and "miprun's default" in warnings[0]
    assert "**Warning:**" in (tmp_path / "bad" / "README.md").read_text()



def _word_file(path, words: int, seed: int):
    """A text file of ``words`` random words of the tiny tokenizer's vocabulary (one token each)."""
    from conftest import WORDS

    generator = torch.Generator().manual_seed(seed)
    path.write_text(" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (words,), generator=generator).tolist()))
    return path


def _covered(starts, seq_len):
    return {token for start in starts for token in range(start, start + seq_len)}


def test_the_check_windows_share_no_token_with_what_selection_and_healing_read(tmp_path):
    """The check's windows are held out for real: drawn where no calibration or healing window
    reaches, and apart from each other; where the source has no room left (a small file read whole
    by the healing windows), the rest are drawn as before and the record says how many are disjoint."""
    from conftest import WORDS, build_tokenizer

    from miprun.data.calibration import load_calibration

    tokenizer = build_tokenizer()
    large = _word_file(tmp_path / "large.txt", 6000, seed=7)
    fit = load_calibration(str(large), tokenizer, num_samples=40, seq_len=32, seed=0)
    heal = load_calibration(str(large), tokenizer, num_samples=80, seq_len=32, seed=0)
    check = load_calibration(str(large), tokenizer, num_samples=8, seq_len=32, seed=1, held_out_from=[fit, heal])
    assert check.source["held_out"] == {"windows": 8, "disjoint": 8, "source_tokens": 6000, "tokens_read_before": 3840}
    assert not _covered(check.starts, 32) & _covered(fit.starts + heal.starts, 32)
    assert len(_covered(check.starts, 32)) == 8 * 32  # no two check windows overlap
    for row, start in zip(check.input_ids.tolist(), check.starts):
        assert row == tokenizer(large.read_text(), add_special_tokens=False).input_ids[start:start + 32]
    small = tmp_path / "small.txt"
    small.write_text(" ".join(WORDS[:100]) * 3)
    read = load_calibration(str(small), tokenizer, num_samples=64, seq_len=16, seed=0)
    crowded = load_calibration(str(small), tokenizer, num_samples=8, seq_len=16, seed=1, held_out_from=[read])
    assert crowded.source["held_out"]["disjoint"] < 8 and crowded.input_ids.shape == (8, 16)


def test_a_run_on_a_source_its_fits_read_whole_says_its_check_is_optimistic(tmp_path, text_file):
    result = CliRunner().invoke(app, ["run", "--model", str(save_tiny(tmp_path / "tiny", "llama")), "--calib",
                                      str(text_file), "--prune", "1", "--seq-len", "16", "--num-samples", "4",
                                      "--heal-samples", "400", "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "of the quality check's 8 windows share no token with the text selection and healing read" in output
    assert "the check is optimistic; pass a larger --calib" in output


@pytest.mark.parametrize("apart_count", [None, 14])
def test_the_windows_the_healing_preview_fits_on_share_no_token_with_the_calibration_windows(tmp_path, apart_count):
    """The healing windows repeat the calibration windows first; the next ``apart_count`` (as many
    as the calibration's by default) — what the selection's preview fits on, to judge sets on the
    calibration windows — are redrawn where they overlap a calibration window, and every other
    window stays as drawn."""
    from conftest import build_tokenizer

    from miprun.data.calibration import load_calibration

    tokenizer = build_tokenizer()
    held = 8 if apart_count is None else apart_count
    source = _word_file(tmp_path / "source.txt", 1500, seed=8)
    calibration = load_calibration(str(source), tokenizer, num_samples=8, seq_len=32, seed=0)
    plain = load_calibration(str(source), tokenizer, num_samples=40, seq_len=32, seed=0)
    healing = load_calibration(str(source), tokenizer, num_samples=40, seq_len=32, seed=0, apart_from=calibration,
                               apart_count=apart_count)
    assert healing.starts[:8] == calibration.starts == plain.starts[:8]
    fit = [s for s in healing.starts if s not in set(calibration.starts)][:held]
    drawn = [s for s in plain.starts if s not in set(calibration.starts)]
    overlapping = [s for s in drawn[:held] if _covered([s], 32) & _covered(calibration.starts, 32)]
    assert overlapping, "the test needs a plain draw whose preview windows overlap the calibration ones"
    assert any(drawn.index(s) >= 8 for s in overlapping) == (held > 8), "and, with more, one beyond the first 8"
    assert not _covered(fit, 32) & _covered(calibration.starts, 32)
    assert healing.source["apart_from"] == {"redrawn": len(overlapping), "still_overlapping": 0}
    changed = [i for i, (a, b) in enumerate(zip(healing.starts, plain.starts)) if a != b]
    assert len(changed) == len(overlapping) and all(8 <= i < 8 + held for i in changed)
    text_ids = tokenizer(source.read_text(), add_special_tokens=False).input_ids
    assert all(row == text_ids[s : s + 32] for row, s in zip(healing.input_ids.tolist(), healing.starts))
