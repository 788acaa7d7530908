"""Every saved checkpoint carries a Hugging Face model card that round-trips through ModelCard.load."""

from __future__ import annotations

from conftest import build_tiny
from huggingface_hub import ModelCard

import miprun
from miprun.model_card import model_card


def test_a_saved_checkpoint_has_a_model_card_with_front_matter_and_the_run(tmp_path, text_file):
    out = tmp_path / "out"
    result = miprun.prune(build_tiny("llama", layers=5), n=2, calib=str(text_file), num_samples=2, seq_len=16,
                          method="shortgpt", output=out, evaluate={"ppl": (str(text_file),), "seq_len": 32})
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert {"pruned", "miprun", "block-pruning"} <= set(card.data.tags)
    assert card.data.base_model is None  # an in-memory model has no hub id to name
    blocks = result.selection.blocks
    assert f"blocks {blocks} (2 of 5" in card.text and "`block-influence`" in card.text and "`greedy`" in card.text
    surgery = result.report["surgery"]
    assert f"{surgery['parameters_before']:,} → {surgery['parameters_after']:,}" in card.text
    assert "| perplexity " in card.text  # the run evaluated: its figures are on the card
    assert "seed 0" in card.text and "--from-report" in card.text
    assert ModelCard(card.content).data.to_dict() == card.data.to_dict()  # round trip


def test_the_card_says_what_was_healed_and_that_the_selection_judged_the_healed_model(tmp_path, text_file):
    out = tmp_path / "out"
    result = miprun.prune(build_tiny("llama", layers=5), n=2, calib=str(text_file), num_samples=2, seq_len=16,
                          heal_samples=6, heal="linear", output=out)  # named: kept even where it loses
    text = ModelCard.load(out / "README.md").text
    cuts = result.report["surgery"]["healing"]["cuts"]
    afters = [after["refitted"] for c in cuts for after in c.get("after_cut", [])]
    assert afters and all(a.endswith("self_attn.o_proj") for a in afters)  # the block after each inner cut
    modules = [c["folded_into"] for c in cuts if c["folded_into"]] + afters
    assert f"healed without training: {len(modules)} closed-form fit(s) ({modules[0]}" in text
    assert f"tokens (products: {result.report['surgery']['healing']['products']})" in text  # what the fit multiplied in
    for cut in cuts:  # a cut at block 0 of this tied model has no fit of its own, and the card says why
        assert (cut["folded_into"] is None) == (f"no fit of their own ({cut.get('not_fitted')})" in text)
    assert afters[-1] in text
    # the preview fits on every healing sequence that is not a calibration one (6 − 2; its rule asks 16)
    assert "chosen for the healed model" in text and "on 4 healing sequences the scores did not read" in text


def test_a_hub_or_embedded_source_is_the_cards_base_model():
    report = {"model": {"spec": "meta-llama/Llama-2-7b-hf", "kind": "hub"}, "granularity": "block", "method": "mi-prun",
              "selected_blocks": [3, 4], "prune": {"of_blocks": 32}, "strategies": {}, "data": {}, "seed": 1}
    assert model_card(report).data.base_model == "meta-llama/Llama-2-7b-hf"
    report["model"] = {"spec": "smollm2-135m", "kind": "embedded", "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    assert model_card(report).data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
