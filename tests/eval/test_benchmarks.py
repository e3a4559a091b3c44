"""Readers for the benchmark files as they are published: Q-Bench2-HF, Mantis-Eval, CaD-QA.

Fixtures are written with real ``datasets`` features (images embedded where the Hub copy embeds
them); accuracies are recomputed here from the rows the test wrote."""

from __future__ import annotations

from llava_compare.eval.formats import read_eval_data


def test_qbench2_hub_layout_reads_every_row(qbench2_hf_parquet):
    """The reported bug: option0..3 + correct_choice rows were all skipped as answer_not_in_options."""
    path, rows = qbench2_hf_parquet
    data = read_eval_data(str(path), "qbench2")
    assert not data.skipped and len(data.samples) == len(rows)
    for s, r in zip(data.samples, rows):
        opts = [r[f"option{k}"] for k in range(4) if r[f"option{k}"] != "N/A"]
        assert s.id == str(r["id"]) and s.meta["options"] == opts
        assert s.meta["gold_index"] == "ABCD".index(r["correct_choice"])
