"""Tests for the synthetic comparison-data generator (CPU, small sizes, a few seconds)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llava_compare.synth import generator as synthetic
from llava_compare.synth.config import DIRECTIONS, MULTI_IMAGE_TASKS
from llava_compare.synth.generator import TASKS, Difficulty, generate

N_TRAIN, N_EVAL = 84, 42
MC_TASKS = tuple(DIRECTIONS)
#: Without sensor noise, for the checks that read blur off the pixels of one sample.
NOISELESS = Difficulty(sensor_noise=(0.0, 0.0))


def _splits(out: Path) -> dict[str, list[dict]]:
    return {name: json.loads((out / f"{name}.json").read_text()) for name in ("train", "eval", "captions")}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict[str, list[dict]]]:
    out = tmp_path_factory.mktemp("synth")
    summary = generate(out, N_TRAIN, N_EVAL, seed=0)
    return out, summary, _splits(out)


@pytest.fixture(scope="module")
def noiseless(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[dict]]]:
    out = tmp_path_factory.mktemp("synth_noiseless")
    generate(out, 120, 0, seed=1, n_captions=0, tasks=["blur", "sharpest"], config=NOISELESS)
    return out, _splits(out)


def _load(out: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(out / rel).convert("RGB"), dtype=np.float64)


def _laplacian_energy(out: Path, rel: str) -> float:
    """Mean squared Laplacian of the grey image at 64 px: high-frequency energy, lower = blurrier.

    Squared, and measured at 64 px, because blur radii scale with image size: at large sizes the
    plain per-pixel |Laplacian| of a blurred image is dominated by uint8 rounding steps.
    """
    with Image.open(out / rel) as img:
        g = np.asarray(img.convert("L").resize((64, 64), Image.Resampling.BOX), dtype=np.float64)
    lap = -4 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    return float(np.square(lap).mean())


def _answer_idx(rec: dict) -> int:
    return rec["options"].index(rec["answer"])


def _mc(splits: dict[str, list[dict]], task: str) -> list[dict]:
    return [r for name in ("train", "eval") for r in splits[name] if r["task"] == task]


def _dir_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Files and record format
# ---------------------------------------------------------------------------------------------


def test_files_exist_and_decode_as_png(data):
    out, _, splits = data
    for name, records in splits.items():
        for rec in records:
            for rel in rec["image"]:
                assert not Path(rel).is_absolute() and rel.startswith(f"images/{name}/")
                with Image.open(out / rel) as img:
                    assert img.format == "PNG" and img.size == (64, 64) and img.mode == "RGB"
    assert (out / "meta.json").is_file()


def test_image_size_option(tmp_path):
    generate(tmp_path, 5, 0, image_size=48, n_captions=1)
    pngs = list((tmp_path / "images").rglob("*.png"))
    assert pngs and all(Image.open(p).size == (48, 48) for p in pngs)


def test_records_have_documented_keys_and_placeholders(data):
    _, _, splits = data
    for name, records in splits.items():
        for i, rec in enumerate(records):
            assert {"id", "image", "conversations", "task", "options", "answer"} <= rec.keys()
            assert rec["id"] == f"{name}-{i:06d}"
            human, gpt = rec["conversations"]
            assert human["from"] == "human" and gpt["from"] == "gpt"
            assert human["value"].count("<image>") == len(rec["image"])
            assert human["value"].startswith("<image>\n" * len(rec["image"]))
            assert "Image 1:" not in human["value"]  # the conversation builder adds the markers
            assert gpt["value"] == rec["answer"]


def test_answers_are_options_and_change_is_free_text(data):
    _, _, splits = data
    for rec in splits["train"] + splits["eval"]:
        if rec["task"] == "change":
            assert rec["options"] is None
            assert rec["change_type"] in synthetic.CHANGE_TYPES
            assert rec["answer"].startswith("The ") and rec["answer"].endswith(".")
        else:
            k = len(rec["image"])
            assert rec["options"] == [f"Image {i}" for i in range(1, k + 1)]
            assert rec["answer"] in rec["options"]


def test_tasks_round_robin(data):
    _, summary, splits = data
    for name, n in (("train", N_TRAIN), ("eval", N_EVAL)):
        counts = Counter(r["task"] for r in splits[name])
        assert set(counts) == set(TASKS) and sum(counts.values()) == n
        assert max(counts.values()) - min(counts.values()) <= 1
        assert summary["counts"][name] == dict(counts)


def test_captions(data):
    _, summary, splits = data
    caps = splits["captions"]
    assert len(caps) == N_TRAIN  # default n_captions = n_train
    for rec in caps:
        assert len(rec["image"]) == 1
        assert rec["conversations"][0]["value"] == "<image>\nDescribe the image briefly."
        text = rec["conversations"][1]["value"]
        assert text.startswith(("A ", "An ")) and "background" in text and text.endswith(".")
    assert summary["images"]["captions"] == N_TRAIN


def test_meta(data):
    out, _, _ = data
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["version"] == synthetic.VERSION
    assert meta["config"]["brightness_ratio"] == [1.2, 1.5]
    assert sum(meta["counts"]["train"].values()) == N_TRAIN


# ---------------------------------------------------------------------------------------------
# Balance, determinism, split disjointness
# ---------------------------------------------------------------------------------------------


def _assert_balanced(records: list[dict]) -> None:
    groups: dict[tuple[str, str, int], Counter] = {}
    directions: dict[str, Counter] = {}
    for rec in records:
        if rec["options"] is not None:
            key = (rec["task"], rec["direction"], len(rec["options"]))
            groups.setdefault(key, Counter())[_answer_idx(rec)] += 1
            directions.setdefault(rec["task"], Counter())[rec["direction"]] += 1
    for key, counter in groups.items():
        per_pos = [counter.get(i, 0) for i in range(key[2])]
        assert max(per_pos) - min(per_pos) <= 1, (key, per_pos)
    for task, counter in directions.items():
        assert set(counter) == set(DIRECTIONS[task]), task
        assert max(counter.values()) - min(counter.values()) <= 1, (task, counter)


def test_answer_positions_balanced(data):
    _, _, splits = data
    _assert_balanced(splits["train"])
    _assert_balanced(splits["eval"])


@pytest.mark.parametrize("n", [1, 7, 103, 1000])
def test_plan_balanced_for_many_sizes(n):
    rng = np.random.default_rng(n)
    slots = synthetic._plan_split(n, TASKS, Difficulty(), rng)
    assert len(slots) == n
    per = Counter((s.task, s.direction, s.n_images, s.answer_idx, s.change_type) for s in slots)
    for task in TASKS:
        for d, k in {(s.direction, s.n_images) for s in slots if s.task == task}:
            counts = [v for (t, dd, kk, _, _), v in per.items() if (t, dd, kk) == (task, d, k)]
            width = len(synthetic.CHANGE_TYPES) if task == "change" else k
            counts += [0] * (width - len(counts))
            assert max(counts) - min(counts) <= 1, (task, d, k, counts)
        dirs = Counter(s.direction for s in slots if s.task == task)
        assert max(dirs.values(), default=0) - min(dirs.values(), default=0) <= 1, (task, dirs)
    for task in MULTI_IMAGE_TASKS:
        ks = Counter(s.n_images for s in slots if s.task == task)
        assert set(ks) <= {3, 4} and (len(ks) < 2 or abs(ks[3] - ks[4]) <= 1)


def test_same_seed_identical_bytes_different_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(a, 10, 5, seed=7)
    generate(b, 10, 5, seed=7)
    generate(c, 10, 5, seed=8)
    files_a, files_b, files_c = _dir_bytes(a), _dir_bytes(b), _dir_bytes(c)
    assert files_a == files_b
    assert files_a.keys() == files_c.keys()
    assert files_a["train.json"] != files_c["train.json"]
    pngs = [k for k in files_a if k.endswith(".png")]
    assert all(files_a[k] != files_c[k] for k in pngs)


def test_eval_images_never_in_train(data):
    out, _, splits = data

    def hashes(records):
        return {hashlib.sha256(_load(out, p).tobytes()).hexdigest() for r in records for p in r["image"]}

    seen = hashes(splits["train"]) | hashes(splits["captions"])
    assert not seen & hashes(splits["eval"])


def test_collision_is_redrawn(tmp_path):
    """Forbid exactly the images the stream would produce: the first sample must be redrawn."""
    ctx = synthetic.Ctx(64, Difficulty())
    slots = synthetic._plan_split(5, TASKS, ctx.cfg, np.random.default_rng(0))
    gen = synthetic._generate_split
    _, first, _ = gen(tmp_path / "a", "eval", slots, ctx, np.random.default_rng(1), set())
    _, second, redraws = gen(tmp_path / "b", "eval", slots, ctx, np.random.default_rng(1), first)
    assert redraws >= 1 and not first & second


def test_collision_that_never_resolves_fails_loudly():
    constant = synthetic.Item([np.zeros((4, 4, 3), np.uint8)], "q", "a", None)
    forbidden = {synthetic.image_hash(constant.images[0])}
    slot = synthetic.Slot("caption", 1)
    ctx = synthetic.Ctx(64, Difficulty())
    with pytest.raises(RuntimeError, match="forbidden"):
        synthetic._generate_item(lambda *_: constant, np.random.default_rng(0), ctx, slot, forbidden)


# ---------------------------------------------------------------------------------------------
# The answers are true of the pixels
# ---------------------------------------------------------------------------------------------


def _extreme(values: list[float], rec: dict) -> int:
    """The position the question asks for, read from per-image ``values`` of the compared property."""
    high = DIRECTIONS[rec["task"]][rec["direction"]]
    return int(np.argmax(values) if high else np.argmin(values))


@pytest.mark.parametrize("task", ["brightness", "brightest"])
def test_brightness_answer_is_the_asked_extreme(data, task):
    out, _, splits = data
    recs = _mc(splits, task)
    assert {r["direction"] for r in recs} == set(DIRECTIONS[task])
    for rec in recs:
        means = [_load(out, p).mean() for p in rec["image"]]
        answer = _answer_idx(rec)
        assert _extreme(means, rec) == answer, (rec["id"], means)
        nearest = min((m for i, m in enumerate(means) if i != answer), key=lambda m: abs(m - means[answer]))
        ratio = max(means[answer], nearest) / min(means[answer], nearest)
        assert 1.15 < ratio < 1.55, (rec["id"], ratio)  # the configured ratio, survives noise and rounding
        assert rec["brightness_ratio"] <= 1.5


def test_blur_answer_is_the_asked_extreme(noiseless):
    out, splits = noiseless
    recs = _mc(splits, "blur") + _mc(splits, "sharpest")
    assert {r["direction"] for r in recs} == {"blurrier", "sharper", "sharpest"}
    for rec in recs:
        radii, answer = rec["blur_radii"], _answer_idx(rec)
        assert _extreme(radii, rec) == answer
        assert all(abs(radii[answer] - r) >= 1.0 - 1e-6 for i, r in enumerate(radii) if i != answer)
        assert all(0.0 <= r <= 2.5 for r in radii)
        # the pixels agree: less high-frequency energy is more blur
        energy = [-_laplacian_energy(out, p) for p in rec["image"]]
        assert _extreme(energy, rec) == answer, (rec["id"], energy)


def test_blur_answers_hold_at_larger_image_size(tmp_path):
    generate(tmp_path, 20, 0, image_size=128, tasks=["blur", "sharpest"], n_captions=0, config=NOISELESS)
    for rec in json.loads((tmp_path / "train.json").read_text()):
        energy = [-_laplacian_energy(tmp_path, p) for p in rec["image"]]
        assert _extreme(energy, rec) == _answer_idx(rec), (rec["id"], energy)


def test_images_carry_photo_like_nuisances(data):
    """Sensor noise per sample, light falloff and texture: no flat regions anywhere."""
    out, _, splits = data
    recs = [r for r in splits["train"] if r["options"] is not None]
    noise = [r["sensor_noise"] for r in recs]
    assert 0.0 <= min(noise) and max(noise) <= 4.0 and len(set(noise)) > len(noise) // 2
    for rec in recs[:20]:
        img = _load(out, rec["image"][0])
        assert img.std() > 3.0 and len(np.unique(img.reshape(-1, 3), axis=0)) > 200


@pytest.mark.parametrize("task", MULTI_IMAGE_TASKS)
def test_multi_image_tasks_have_3_or_4_images(data, task):
    _, _, splits = data
    recs = _mc(splits, task)
    assert {len(r["image"]) for r in recs} == {3, 4}
    assert all(r["options"] == [f"Image {i + 1}" for i in range(len(r["image"]))] for r in recs)


@pytest.mark.parametrize("task", ["count", "most"])
def test_count_answer_is_the_asked_extreme(data, task):
    _, _, splits = data
    recs = _mc(splits, task)
    assert {r["direction"] for r in recs} == set(DIRECTIONS[task])
    for rec in recs:
        counts, answer = rec["counts"], _answer_idx(rec)
        assert len(counts) == len(rec["image"]) and all(1 <= c <= 5 for c in counts)
        assert _extreme(counts, rec) == answer
        assert all(c != counts[answer] for i, c in enumerate(counts) if i != answer)  # a unique extreme


def test_change_images_differ(data):
    out, _, splits = data
    recs = _mc(splits, "change")
    assert {r["change_type"] for r in recs} == set(synthetic.CHANGE_TYPES)
    for rec in recs:
        a, b = (_load(out, p) for p in rec["image"])
        assert not np.array_equal(a, b)


def test_single_task_as_string(tmp_path):
    assert generate(tmp_path, 2, 0, tasks="count")["counts"]["train"] == {"count": 2}


def test_task_subset(tmp_path):
    summary = generate(tmp_path, 6, 3, tasks=["blur"], n_captions=0)
    assert summary["counts"]["train"] == {"blur": 6}
    assert summary["counts"]["captions"] == {}
    assert json.loads((tmp_path / "captions.json").read_text()) == []


# ---------------------------------------------------------------------------------------------
# Errors and CLI
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_train": -1}, "n_train must be a non-negative"),
        ({"n_eval": -3}, "n_eval must be a non-negative"),
        ({"n_captions": -1}, "n_captions"),
        ({"image_size": 8}, "image_size"),
        ({"tasks": ["brightness", "hue"]}, "unknown task.*'hue'.*valid tasks: brightness, blur, count"),
        ({"tasks": ["blur", "blur"]}, "duplicate"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    args = {"out_dir": tmp_path, "n_train": 2, "n_eval": 1} | kwargs
    with pytest.raises(ValueError, match=match):
        generate(**args)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"brightness_ratio": (0.9, 1.2)},
        {"blur_gap": 3.0},
        {"object_count": (3, 3)},
        {"object_count": (1, 40)},
        {"backgrounds": ("plaid",)},
        {"multi_images": ()},
        {"illumination": (0.0, 1.0)},
        {"sensor_noise": (-1.0, 2.0)},
    ],
)
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        Difficulty(**kwargs)


def test_cli_main(tmp_path, capsys):
    assert synthetic.main([str(tmp_path / "o"), "--train", "5", "--eval", "2", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "train: 5 samples" in printed and "eval: 2 samples" in printed
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert meta["seed"] == 3


def test_cli_rejects_bad_values(tmp_path, capsys):
    with pytest.raises(SystemExit):
        synthetic.main([str(tmp_path), "--train", "-1", "--eval", "2"])
    assert "non-negative" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        synthetic.main([str(tmp_path), "--train", "1", "--eval", "1", "--tasks", "blur,hue"])
    assert "valid tasks" in capsys.readouterr().err
    assert synthetic.main([str(tmp_path), "--train", "1", "--eval", "1", "--image-size", "4"]) == 2
    assert "image_size" in capsys.readouterr().err


def test_train_weights_set_train_shares_and_leave_eval_round_robin(tmp_path):
    """A recipe can train mostly on some tasks (the real-weights demo) and still score every task
    on the same number of held-out items; answer positions stay balanced within each task."""
    weights = {"brightness": 3, "blur": 3, "count": 3, "sharpest": 1, "change": 1, "brightest": 1, "most": 1}
    generate(tmp_path, n_train=78, n_eval=14, n_captions=0, train_weights=weights)
    train = json.loads((tmp_path / "train.json").read_text())
    assert Counter(r["task"] for r in train) == {"brightness": 18, "blur": 18, "count": 18, "sharpest": 6,
                                                 "change": 6, "brightest": 6, "most": 6}
    assert Counter(r["task"] for r in json.loads((tmp_path / "eval.json").read_text())) == {t: 2 for t in TASKS}
    # spread through the split, not in blocks: every third of it holds each task
    for third in (train[:26], train[26:52], train[52:]):
        assert {r["task"] for r in third} == set(TASKS)
    _assert_balanced(train)
    assert json.loads((tmp_path / "meta.json").read_text())["train_weights"] == weights


@pytest.mark.parametrize("weights, match", [({"colour": 1}, "not generated"), ({"blur": -1}, "non-negative"),
                                            ({"blur": 0}, "at least one")])
def test_bad_train_weights(tmp_path, weights, match):
    with pytest.raises(ValueError, match=match):
        generate(tmp_path, n_train=10, n_eval=0, n_captions=0, train_weights=weights)


CURRICULUM = {"share": 0.5, "directions": ["brighter", "blurrier", "more"]}


def test_curriculum_first_phase_asks_only_its_directions(tmp_path):
    """The first half of the train split asks each property one way, 2-image questions only (no
    multi-image direction listed); the second every task and way, each phase balanced in its own
    right; the eval split asks every direction."""
    tasks = ["brightness", "blur", "count", "sharpest", "brightest", "most"]
    generate(tmp_path, 96, 24, n_captions=0, tasks=tasks, curriculum=CURRICULUM)
    train = json.loads((tmp_path / "train.json").read_text())
    assert [r["curriculum_phase"] for r in train] == [0] * 48 + [1] * 48
    first, second = train[:48], train[48:]
    assert {r["direction"] for r in first} == set(CURRICULUM["directions"])
    assert Counter(r["task"] for r in first) == {"brightness": 16, "blur": 16, "count": 16}
    assert {r["direction"] for r in second} == {d for t in tasks for d in DIRECTIONS[t]}
    for phase in (first, second):
        groups = Counter((r["task"], r["direction"], len(r["image"]), _answer_idx(r)) for r in phase)
        for (task, d, k, _), _n in groups.items():
            per_pos = [groups.get((task, d, k, i), 0) for i in range(k)]
            assert max(per_pos) - min(per_pos) <= 1, (task, d, k, per_pos)
    evals = json.loads((tmp_path / "eval.json").read_text())
    assert "curriculum_phase" not in evals[0] and {r["direction"] for r in evals} >= {"darker", "fewer", "blurrier"}
    assert json.loads((tmp_path / "meta.json").read_text())["curriculum"] == CURRICULUM
    assert synthetic.settings_mismatch(tmp_path, 96, 24, n_captions=0, tasks=tasks, curriculum=CURRICULUM) is None
    assert "curriculum" in synthetic.settings_mismatch(tmp_path, 96, 24, n_captions=0, tasks=tasks)


@pytest.mark.parametrize("curriculum, match", [
    ({"share": 1.0, "directions": ["more"]}, "fraction in"),
    ({"share": 0.5, "directions": ["louder"]}, "unknown direction"),
    ({"share": 0.5, "directions": ["brightest"]}, "ask nothing of the tasks"),
    ({"share": 0.5}, "takes share and directions"),
])
def test_bad_curriculum(tmp_path, curriculum, match):
    with pytest.raises(ValueError, match=match):
        generate(tmp_path, 10, 0, n_captions=0, tasks=["count", "blur"], curriculum=curriculum)


def test_flat_style_and_directions_give_the_demo_data(tmp_path):
    """The demo's data: flat scenes (no grain, light falloff or sensor noise) asking each 2-image
    question one way, in both splits; recorded in meta.json and checked by settings_mismatch."""
    from llava_compare.synth.config import difficulty

    asked = ["brighter", "blurrier", "more", "sharpest"]
    kwargs = {"n_captions": 0, "tasks": ["brightness", "blur", "count", "sharpest"], "directions": asked,
              "config": difficulty("flat")}
    generate(tmp_path, 40, 20, **kwargs)
    recs = [r for name in ("train", "eval") for r in json.loads((tmp_path / f"{name}.json").read_text())]
    assert {r["direction"] for r in recs} == set(asked)
    assert {r["sensor_noise"] for r in recs} == {0.0}
    assert synthetic.settings_mismatch(tmp_path, 40, 20, **kwargs) is None
    assert "config" in synthetic.settings_mismatch(tmp_path, 40, 20, **(kwargs | {"config": difficulty("photo")}))
    with pytest.raises(ValueError, match="nothing to ask"):
        generate(tmp_path / "x", 4, 0, n_captions=0, tasks=["count"], directions=["brighter"])
    with pytest.raises(ValueError, match="unknown synth style"):
        difficulty("oil")


def test_mirror_asks_each_two_way_pair_the_other_way_with_the_answer_swapped(tmp_path):
    """With ``mirror``, every 2-image brightness/blur/count train item is followed by the same two
    images asked the other way round, the other image as the answer; multi-image and change items
    and the eval split are left alone, and the planned items stay byte-identical to a run without."""
    tasks = ["brightness", "blur", "count", "change", "sharpest"]
    generate(tmp_path / "plain", 40, 10, n_captions=0, tasks=tasks)
    generate(tmp_path / "m", 40, 10, n_captions=0, tasks=tasks, mirror=True)
    plain = json.loads((tmp_path / "plain" / "train.json").read_text())
    train = json.loads((tmp_path / "m" / "train.json").read_text())
    assert [r for r in train if not r["id"].endswith("-mirror")] == plain
    two_way = [r for r in plain if r["task"] in ("brightness", "blur", "count")]
    mirrors = {r["id"]: r for r in train if r["id"].endswith("-mirror")}
    assert len(mirrors) == len(two_way) == 24
    for rec in two_way:
        m = mirrors[rec["id"] + "-mirror"]
        assert m["image"] == rec["image"] and m["answer"] != rec["answer"] and m["answer"] in rec["options"]
        assert {m["direction"], rec["direction"]} == set(DIRECTIONS[rec["task"]])
        assert m["conversations"][1]["value"] == m["answer"]
        assert m["conversations"][0]["value"].startswith("<image>\n<image>\n")
        assert m["conversations"][0]["value"] != rec["conversations"][0]["value"]
        assert train[train.index(rec) + 1] == m
    assert (tmp_path / "m" / "eval.json").read_bytes() == (tmp_path / "plain" / "eval.json").read_bytes()
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert meta["mirrored"] == 24 and sum(meta["counts"]["train"].values()) == 64
    assert meta["images"]["train"] == len(list((tmp_path / "m" / "images" / "train").glob("*.png")))
    assert synthetic.settings_mismatch(tmp_path / "m", 40, 10, n_captions=0, tasks=tasks, mirror=True) is None
    assert "mirror" in synthetic.settings_mismatch(tmp_path / "m", 40, 10, n_captions=0, tasks=tasks)
    assert "mirror" in synthetic.settings_mismatch(tmp_path / "plain", 40, 10, n_captions=0, tasks=tasks, mirror=True)


def test_mirror_leaves_a_curriculums_one_way_phase_and_left_out_directions_alone(tmp_path):
    tasks = ["brightness", "count"]
    generate(tmp_path / "c", 40, 0, n_captions=0, tasks=tasks, curriculum=CURRICULUM, mirror=True)
    train = json.loads((tmp_path / "c" / "train.json").read_text())
    mirrors = [r for r in train if r["id"].endswith("-mirror")]
    assert len(mirrors) == 20 and {r["curriculum_phase"] for r in mirrors} == {1}
    assert {r["direction"] for r in train if r["curriculum_phase"] == 0} <= set(CURRICULUM["directions"])
    generate(tmp_path / "d", 20, 0, n_captions=0, tasks=tasks, directions=["brighter", "more", "fewer"], mirror=True)
    train = json.loads((tmp_path / "d" / "train.json").read_text())
    assert {r["task"] for r in train if r["id"].endswith("-mirror")} == {"count"}
