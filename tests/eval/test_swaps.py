"""Order swaps (``--swap-orders``): items scored again with their images permuted, the gold answer
moved with them; consistency and position pick rates. The model is stubbed at the scorer
(``scoring.batch_option_logliks`` / ``batch_generate``), so item expansion, record building,
answer parsing, sharding and the metrics are the real code."""

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from llava_compare.data.sample import Message, Sample
from llava_compare.eval import scoring
from llava_compare.eval.formats import prepare_llava_item, read_eval_data
from llava_compare.eval.run import evaluate_samples
from llava_compare.eval.swaps import choose_orders, permute, variants


def grey(level: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (level,) * 3)


def item(i: int, k: int, gold: int, question: str | None = None, options: list[str] | None = None,
         direction: str | None = None) -> Sample:
    """A k-image "which is brightest" item: image ``gold`` is white, the others darker greys, each a
    distinct level so a permutation can be read back from the pixels."""
    ims = [grey(255 if j == gold else 20 + 30 * j) for j in range(k)]
    options = options or [f"Image {j + 1}" for j in range(k)]
    listing = " or ".join(options) if k == 2 else ", ".join(options[:-1]) + " or " + options[-1]
    question = question or f"Which image is the brightest? Answer with {listing}."
    meta = {"task": f"bright{k}", "options": options, "answer": options[gold]}
    if direction:
        meta["direction"] = direction
    return prepare_llava_item(Sample(f"it-{k}-{i}", [Message("user", "<image>\n" * k + question),
                                                     Message("assistant", options[gold])], images=ims, meta=meta))


def balanced(k: int, n_per_position: int = 2) -> list[Sample]:
    return [item(p * n_per_position + r, k, p) for p in range(k) for r in range(n_per_position)]


_WORDS = {"first": 0, "second": 1}


def _image_of(option: str) -> int | None:
    """"Image 3" / "C. Image 3" -> 2, "The second image" -> 1, "They are the same" -> None."""
    words = option.rstrip(".").lower().split()
    if words[-1].isdigit():
        return int(words[-1]) - 1
    return _WORDS.get(words[-2]) if len(words) > 1 else None


def _brightness(im: Image.Image) -> int:
    return im.getpixel((0, 0))[0]


def follow_scores(model, processor, builder, items, padding_side="right"):
    """A model that looks: each option scores the brightness of the image it names."""
    return [[-1.0 if _image_of(o) is None else float(_brightness(s.images[_image_of(o)])) for o in opts]
            for s, opts in items]


def _answer(s: Sample, image: int) -> str:
    """What a model would write for the option naming ``image``: its letter on a lettered prompt."""
    option = next(j for j, o in enumerate(s.meta["options"]) if _image_of(o) == image)
    return "ABCD"[option] if s.meta.get("lettered") else s.meta["options"][option]


def follow_text(model, processor, builder, samples, max_new_tokens=32):
    return [_answer(s, max(range(len(s.images)), key=lambda j: _brightness(s.images[j]))) for s in samples]


def first_scores(model, processor, builder, items, padding_side="right"):
    """A model with a position bias only: the first option wins whatever the images."""
    return [[-float(j) for j in range(len(opts))] for _, opts in items]


def first_text(model, processor, builder, samples, max_new_tokens=32):
    return [_answer(s, 0) for s in samples]


STUBS = {"follow": (follow_scores, follow_text), "first": (first_scores, first_text)}


@pytest.fixture
def stub(monkeypatch):
    def use(name: str) -> nn.Module:
        loglik, generate = STUBS[name]
        monkeypatch.setattr(scoring, "batch_option_logliks", loglik)
        monkeypatch.setattr(scoring, "batch_generate", generate)
        return nn.Linear(1, 1)  # a module with parameters: evaluate_samples toggles eval()/train()
    return use


def run(model, samples, mode, n, out=None):
    return evaluate_samples(model, None, None, samples, out, mode=mode, batch_size=3, progress=False,
                            swap_orders=n)


@pytest.mark.parametrize("mode", ["loglik", "generate"])
def test_always_image_1_is_never_consistent_and_picks_position_1(stub, mode):
    summary = run(stub("first"), balanced(2, 3), mode, 1)
    sw = summary["swap"]["overall"]
    assert sw["n"] == 6 and sw["n_scored"] == 12
    assert sw["consistency"] == 0.0
    assert sw["positions"]["2"]["pick"] == [1.0, 0.0] and sw["positions"]["2"]["gold"] == [0.5, 0.5]
    assert sw["max_position_excess"] == pytest.approx(0.5)
    assert sw["accuracy"] == 0.5 and sw["accuracy_all_orders"] == 0.5
    assert summary["tasks"]["bright2"]["accuracy"] == 0.5  # the original-order table is unchanged


@pytest.mark.parametrize("mode", ["loglik", "generate"])
def test_a_model_that_follows_the_images_is_consistent_in_2_3_and_4_image_orders(stub, mode, tmp_path):
    samples = balanced(2) + balanced(3) + balanced(4)
    summary = run(stub("follow"), samples, mode, 3, tmp_path)
    sw = summary["swap"]
    assert sw["orders_scored"] == {"2": 1, "3": 3, "4": 3}  # two images have one other order only
    for m in [sw["overall"], *sw["tasks"].values(), *sw["image_counts"].values()]:
        assert m["consistency"] == 1.0 and m["accuracy"] == 1.0 and m["accuracy_all_orders"] == 1.0
        for v in m["positions"].values():
            assert v["pick"] == pytest.approx(v["gold"])
        assert m["max_position_excess"] == pytest.approx(0.0)
    assert sw["overall"]["n_scored"] == 4 * 2 + 6 * 4 + 8 * 4
    preds = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == len(samples)  # one row per item; its other orders are inside it
    assert all(len(p["swaps"]) == (1 if p["num_images"] == 2 else 3) for p in preds)
    metrics = json.loads((tmp_path / "results.json").read_text())["metrics"]
    assert metrics["swap"]["overall"]["consistency"] == 1.0
    html = (tmp_path / "report.html").read_text()
    assert "Order swaps" in html and "other orders: images (" in html


@pytest.mark.parametrize("k", [3, 4])
def test_permuted_items_move_the_gold_answer_with_the_gold_image(k):
    samples = balanced(k)
    found, excluded = variants(samples, k - 1)
    assert not excluded and len(found) == len(samples) * (k - 1)
    for v in found:
        s, p = samples[v.parent], v.sample
        assert p.images == [s.images[i] for i in v.order]
        gold_image = s.images[s.meta["gold_index"]]
        assert p.images[_image_of(p.meta["answer"])] is gold_image
        assert p.meta["options"][p.meta["gold_index"]] == p.meta["answer"] == p.messages[-1].content
    for parent in range(len(samples)):
        orders = [v.order for v in found if v.parent == parent]
        gold = samples[parent].meta["gold_index"]
        assert len(set(orders)) == k - 1 and tuple(range(k)) not in orders
        # k - 1 orders put the gold image at each of the other k - 1 positions
        assert sorted(o.index(gold) for o in orders) == [q for q in range(k) if q != gold]
        # and no image stays where it was (a kept image would hide a position preference)
        assert all(all(o[p] != p for p in range(k)) for o in orders)
    assert choose_orders("x", k, 1, 30) == choose_orders("x", k, 1, 30)  # seeded by the item id
    assert len(choose_orders("x", k, 1, 30)) == (6 if k == 3 else 24) - 1


def test_items_whose_question_or_options_name_positions_are_left_out(stub):
    samples = [item(0, 2, 0, question="Is Image 1 brighter than Image 2? Answer with Image 1 or Image 2."),
               item(1, 2, 1, question="Is the left image darker? Answer with Image 1 or Image 2."),
               item(2, 2, 0, options=["Image 1", "Image 2", "They are the same"]),
               item(3, 2, 1, options=["The first image", "The second image"],
                    question="Which image is brighter?"),
               item(4, 2, 0)]
    summary = run(stub("follow"), samples, "loglik", 1)
    sw = summary["swap"]
    assert sw["excluded"] == {"question_names_an_image": 2, "options_not_one_per_image": 1}
    assert sw["overall"]["n"] == 2 and sw["overall"]["consistency"] == 1.0


def test_direction_from_the_row_groups_the_metrics(stub, tmp_path):
    rows = []
    for i in range(4):
        gold, ims = i % 2, []
        for j in range(2):
            path = tmp_path / f"{i}_{j}.png"
            grey(255 if j == gold else 10).save(path)
            ims.append(path.name)
        direction = ["brighter", "darker"][i // 2]
        rows.append({"id": f"r{i}", "image": ims, "task": "brightness", "direction": direction,
                     "options": ["Image 1", "Image 2"], "answer": f"Image {gold + 1}",
                     "conversations": [{"from": "human", "value": "<image>\n<image>\nWhich image is "
                                        f"{direction}? Answer with Image 1 or Image 2."},
                                       {"from": "gpt", "value": f"Image {gold + 1}"}]})
    (tmp_path / "eval.json").write_text(json.dumps(rows))
    data = read_eval_data(str(tmp_path / "eval.json"))
    assert [s.meta["direction"] for s in data.samples] == ["brighter"] * 2 + ["darker"] * 2
    summary = run(stub("first"), data.samples, "loglik", 1)
    assert set(summary["directions"]["brightness"]) == {"brighter", "darker"}
    assert set(summary["swap"]["directions"]["brightness"]) == {"brighter", "darker"}
    assert summary["swap"]["directions"]["brightness"]["darker"]["consistency"] == 0.0


def test_bright_model_scores_the_permuted_pixels(bright_model):
    """The real scorer on the trained tiny model: a swapped item's scores are those of the item
    with its images permuted, and differ from the original order's."""
    from tests.eval.conftest import brightness_items

    model, processor, builder = bright_model
    samples = [s for s in brightness_items(8, seed=3) if not s.meta.get("lettered")]
    records, _ = scoring_with_swaps(model, processor, builder, samples)
    for rec, s in zip(records, samples):
        (sw,) = rec["swaps"]
        again = scoring.batch_option_logliks(model, processor, builder,
                                             [(permute(s, sw["order"]), s.meta["choices"])])[0]
        assert sw["scores"] == pytest.approx(again, abs=1e-4)
        assert sw["scores"] != pytest.approx(rec["scores"], abs=1e-3)


def scoring_with_swaps(model, processor, builder, samples):
    from llava_compare.eval.sharded import score_on_all_ranks
    from llava_compare.eval.swaps import score_in_orders

    return score_in_orders(lambda items: score_on_all_ranks(model, processor, builder, items, "loglik", 4,
                                                            progress=False), samples, 1)


def test_cli_flag_lands_in_results_json(stub, monkeypatch, tmp_path, capsys):
    import llava_compare.eval.run as run_mod
    import llava_compare.loading as loading
    from llava_compare.cli import main as cli_main

    model = stub("first")
    monkeypatch.setattr(loading, "load", lambda ref, *a, **kw: (model, None, None))
    monkeypatch.setattr(loading, "to_device", lambda m, spec="auto": m)
    monkeypatch.setattr(loading, "builder_for", lambda *a, **kw: None)
    monkeypatch.setattr(run_mod, "model_info", lambda ref: {"ref": ref})
    rows = []
    for i in range(4):
        paths = []
        for j in range(2):
            p = tmp_path / f"{i}_{j}.png"
            grey(255 if j == i % 2 else 0).save(p)
            paths.append(p.name)
        rows.append({"id": str(i), "image": paths, "task": "brightness", "options": ["Image 1", "Image 2"],
                     "answer": f"Image {i % 2 + 1}",
                     "conversations": [{"from": "human", "value": "<image>\n<image>\nWhich image is brighter? "
                                        "Answer with Image 1 or Image 2."}, {"from": "gpt", "value": "x"}]})
    (tmp_path / "eval.json").write_text(json.dumps(rows))
    out = tmp_path / "out"
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "wb").mkdir()
    args = ["eval", "fake-model", "--data", str(tmp_path / "eval.json"), "--out", str(out), "--swap-orders", "2",
            "--no-progress", "--wandb"]
    try:
        assert cli_main(args) == 0
    finally:  # wandb keeps process-wide settings (our WANDB_DIR): never leak them into later tests
        import wandb

        wandb.teardown()
    printed = capsys.readouterr().out
    (run_dir,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    table = json.loads(next(run_dir.rglob("predictions*.table.json")).read_text())
    col = table["columns"].index("swap_consistent")
    assert [row[col] for row in table["data"]] == [False] * 4
    assert table["data"][0][table["columns"].index("swap_predictions")] == "21: Image 1"
    assert "order swaps: 2 other order(s) per item (scored: 2 images: 1)" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["swap_orders"] == 2 and "--swap-orders 2" in results["command"]
    assert results["metrics"]["swap"]["overall"]["consistency"] == 0.0
    assert results["metrics"]["swap"]["orders_requested"] == 2
    with pytest.raises(SystemExit):
        cli_main(["eval", "m", "--data", "x", "--swap-orders", "-1"])


# --------------------------------------------------------------------------------------------------
# Sharded: two gloo ranks score shares of the items and their permuted copies
# --------------------------------------------------------------------------------------------------


def _rank_main(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        scoring.batch_option_logliks, scoring.batch_generate = follow_scores, follow_text
        samples = balanced(2) + balanced(3, 1) + balanced(4, 1)
        summary = evaluate_samples(nn.Linear(1, 1), None, None, samples, None, mode="generate", batch_size=2,
                                   progress=False, swap_orders=2)
        Path(out, f"{rank}.json").write_text(json.dumps(summary["swap"]))
    finally:
        dist.destroy_process_group()


def test_sharded_eval_gives_every_rank_the_same_swap_metrics(tmp_path):
    import torch.multiprocessing as mp

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_rank_main, args=(2, f"file://{tmp_path / 'store'}", str(tmp_path)), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1
    assert r0["overall"]["consistency"] == 1.0 and r0["overall"]["accuracy_all_orders"] == 1.0
    assert r0["orders_scored"] == {"2": 1, "3": 2, "4": 2}
    assert r0["overall"]["n_scored"] == 4 * 2 + 3 * 3 + 4 * 3


def test_demo_report_prints_swap_metrics_per_task_and_direction(stub, tmp_path, capsys):
    from llava_compare.demo.user_report import user_report

    samples = [item(i, 2, i % 2, direction=["brighter", "darker"][i // 2 % 2]) for i in range(8)] + balanced(3, 1)
    out = user_report(stub("first"), None, None, samples, tmp_path, batch_size=4, n_examples=4,
                      chats=[{"prompt": "p", "before": "b", "after": "a"}], swap_orders=2)
    printed = capsys.readouterr().out
    assert out["swap"]["tasks"]["bright2"]["consistency"] == 0.0
    assert out["swap"]["directions"]["bright2"]["darker"]["positions"]["2"]["pick"] == [1.0, 0.0]
    assert "order swaps: 2 other order(s) per item (scored: 2 images: 1, 3 images: 2)" in printed
    assert "  darker" in printed and "k=3 pick 1.00/0.00/0.00 gold 0.33/0.33/0.33" in printed
    assert "[bright2 brighter]" in printed and "shown as (image 2, image 1): A: 'Image 1'" in printed
    assert "text-only chat check: p" in printed
    assert json.loads((tmp_path / "results.json").read_text())["swap_orders"] == 2


@pytest.mark.parametrize("mode", ["loglik", "generate"])
def test_benchmark_rows_with_per_image_options_take_part(stub, mode):
    """Lettered benchmark items ("A. Image 1" scored, "A"/"Image 1" parsed) whose options name the
    images are permuted like the synthetic ones; "They are the same" keeps an item out."""
    from llava_compare.eval.formats import parse_table_row

    rows = []
    for i in range(6):
        k, gold = 2 + i % 3, i % 2
        rows.append(parse_table_row({"id": f"mic{i}", "question": "Which image is the brightest?",
                                     "images": [grey(255 if j == gold else 20 + 30 * j) for j in range(k)],
                                     "options": [f"Image {j + 1}" for j in range(k)],
                                     "answer": f"Image {gold + 1}", "task": "mic"}, i, "micbench", None))
    rows.append(parse_table_row({"id": "qb", "question": "Which image is brighter?", "image1": grey(255),
                                 "image2": grey(0), "options": ["The first image", "The second image"],
                                 "answer": "The first image", "Task": "qb"}, 7, "qbench2", None))
    rows.append(parse_table_row({"id": "qb3", "question": "Which image is brighter?", "image1": grey(255),
                                 "image2": grey(0), "options": ["The first image", "The second image",
                                                                "They are the same"],
                                 "answer": "The first image", "Task": "qb"}, 8, "qbench2", None))
    assert all(s.meta["lettered"] for s in rows)
    sw = run(stub("follow"), rows, mode, 2)["swap"]
    assert sw["excluded"] == {"options_not_one_per_image": 1}
    assert sw["overall"]["n"] == 7 and sw["overall"]["consistency"] == 1.0
    assert sw["overall"]["accuracy_all_orders"] == 1.0
