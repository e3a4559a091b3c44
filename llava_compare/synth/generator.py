"""Synthetic image-comparison data: real PNG files plus LLaVA-format JSON.

Why synthetic data: it gives a fine-tuning run whose answers are known exactly, so a pipeline bug
(images shuffled, placeholders misaligned, labels masked wrongly) shows up as a model that cannot
beat chance on questions any working model learns quickly. It needs no download and no licence.

Layout written under ``OUT``::

    images/{train,eval,captions}/<split>_<index>_<k>.png
    train.json  eval.json      multi-image comparison questions (5 tasks)
    captions.json              single-image captions for stage-1 (projector) training
    meta.json                  seed, config, counts, version

Tasks: ``brightness`` / ``blur`` / ``count`` (2 images, asked both ways: brighter or darker,
blurrier or sharper, more or fewer objects; "Image 1" or "Image 2"), ``change`` (2 images,
free-text answer), and ``sharpest`` / ``brightest`` / ``most`` (3-4 images, "Image 1".."Image k").
Multiple-choice records carry the ``direction`` asked.

Guarantees: the same seed gives byte-identical files; directions are balanced per task and the
correct option's position per (task, direction, image count); no eval image is byte-equal to any train or caption image.

CLI: ``python -m llava_compare.synth OUT --train 2000 --eval 200 --seed 0``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from ..data.curriculum import PHASE_KEY
from ..data.sample import IMAGE_PLACEHOLDER
from .blur import make_blur
from .brightness import make_brightness
from .caption import make_caption
from .change import make_change
from .config import CHANGE_TYPES, DIRECTIONS, MULTI_IMAGE_TASKS, Ctx, Difficulty, MAX_COLLISION_TRIES, MIN_IMAGE_SIZE, TASKS
from .count import make_count
from .items import Item, Slot, mc_question
from .scene import image_hash

#: Bumped whenever the same seed would produce different files, so stale data can be detected.
VERSION = 2


_MAKERS: dict[str, Callable[[np.random.Generator, Ctx, Slot], Item]] = {
    "brightness": make_brightness,
    "blur": make_blur,
    "count": make_count,
    "change": make_change,
    "sharpest": make_blur,
    "brightest": make_brightness,
    "most": make_count,
}


def _balanced(n: int, k: int, rng: np.random.Generator) -> list[int]:
    """``n`` values in range(k), each used n//k or n//k + 1 times, in seeded random order."""
    values = [i % k for i in range(n)]
    return [values[int(j)] for j in rng.permutation(n)]


def _task_sequence(n: int, tasks: Sequence[str], weights: Mapping[str, float] | None) -> list[str]:
    """``n`` task names: round robin, or each task's share ``weight / sum`` (largest remainder),
    spread evenly through the split rather than in blocks."""
    if not weights:
        return [tasks[i % len(tasks)] for i in range(n)]
    total = sum(weights.get(t, 0.0) for t in tasks)
    exact = {t: n * weights.get(t, 0.0) / total for t in tasks}
    counts = {t: int(exact[t]) for t in tasks}
    for t in sorted(tasks, key=lambda t: counts[t] - exact[t])[: n - sum(counts.values())]:
        counts[t] += 1
    # Item j of a task with c items sits at (j + 0.5) / c of the split: evenly spread, deterministic.
    spots = sorted(((j + 0.5) / counts[t], k, t) for k, t in enumerate(tasks) for j in range(counts[t]))
    return [t for _, _, t in spots]


def _plan_split(n: int, tasks: Sequence[str], cfg: Difficulty, rng: np.random.Generator,
                weights: Mapping[str, float] | None = None,
                directions: Sequence[str] | None = None) -> list[Slot]:
    """Tasks by :func:`_task_sequence`; per task, balance directions, then per (direction, image
    count) answer positions."""
    slot_tasks = _task_sequence(n, tasks, weights)
    slots: list[Slot | None] = [None] * n
    for task in tasks:
        idx = [i for i, t in enumerate(slot_tasks) if t == task]
        if task == "change":
            for i, c in zip(idx, _balanced(len(idx), len(CHANGE_TYPES), rng)):
                slots[i] = Slot(task, 2, change_type=CHANGE_TYPES[c])
            continue
        asked = [d for d in DIRECTIONS[task] if directions is None or d in directions]
        dirs = [asked[c] for c in _balanced(len(idx), len(asked), rng)]
        choices = cfg.multi_images if task in MULTI_IMAGE_TASKS else (2,)
        ks = [choices[c] for c in _balanced(len(idx), len(choices), rng)]
        # Balancing per (direction, image count) means neither the question nor "4 images" hints
        # at which position is right.
        for d, k in sorted(set(zip(dirs, ks))):
            group = [i for i, dd, kk in zip(idx, dirs, ks) if (dd, kk) == (d, k)]
            for i, pos in zip(group, _balanced(len(group), k, rng)):
                slots[i] = Slot(task, k, answer_idx=pos, direction=d)
    return [s for s in slots if s is not None]


def _generate_item(
    maker: Callable[[np.random.Generator, Ctx, Slot], Item],
    rng: np.random.Generator,
    ctx: Ctx,
    slot: Slot,
    forbidden: set[str],
) -> tuple[Item, list[str], int]:
    """Make one sample, redrawing it while any image is byte-equal to a ``forbidden`` one."""
    for attempt in range(MAX_COLLISION_TRIES):
        item = maker(rng, ctx, slot)
        hashes = [image_hash(a) for a in item.images]
        if not forbidden.intersection(hashes):
            return item, hashes, attempt
    raise RuntimeError(f"{MAX_COLLISION_TRIES} redraws of a {slot.task!r} sample all hit forbidden images")


def _plan_train(n: int, tasks: Sequence[str], cfg: Difficulty, rng: np.random.Generator,
                weights: Mapping[str, float] | None, curriculum: Mapping[str, Any] | None,
                directions: Sequence[str] | None = None) -> list[Slot]:
    """The train split's slots: one plan, or (curriculum) a first phase of ``share`` of the split
    asking only ``directions`` (of the tasks that have one), then the rest asking everything."""
    if not curriculum:
        return _plan_split(n, tasks, cfg, rng, weights, directions)
    first = round(n * curriculum["share"])
    early = _first_phase_tasks(tasks, curriculum["directions"])
    return (_plan_split(first, early, cfg, rng, weights, curriculum["directions"])
            + _plan_split(n - first, tasks, cfg, rng, weights, directions))


def _first_phase_tasks(tasks: Sequence[str], directions: Sequence[str]) -> list[str]:
    """The tasks a curriculum's first phase asks: those with one of its ``directions``."""
    return [t for t in tasks if set(DIRECTIONS.get(t, ())) & set(directions)]


def _conversations(n_images: int, question: str, answer: str) -> list[dict[str, str]]:
    """One placeholder line per image, then the question; the answer as the model's turn."""
    return [{"from": "human", "value": (IMAGE_PLACEHOLDER + "\n") * n_images + question},
            {"from": "gpt", "value": answer}]


def _record(split: str, index: int, item: Item, task: str, paths: list[str]) -> dict[str, Any]:
    return {
        "id": f"{split}-{index:06d}",
        "image": paths,
        "conversations": _conversations(len(paths), item.question, item.answer),
        "task": task,
        "options": item.options,
        "answer": item.answer,
        **item.extra,
    }


def _save_png(arr: np.ndarray, path: Path) -> None:
    # Fixed options and no metadata chunks: identical arrays give identical bytes.
    Image.fromarray(arr).save(path, format="PNG", compress_level=1, optimize=False)


def _generate_split(
    out: Path, split: str, slots: Sequence[Slot], ctx: Ctx, rng: np.random.Generator, forbidden: set[str]
) -> tuple[list[dict[str, Any]], set[str], int]:
    """Write a split's PNGs; return its records, its image hashes and the number of redraws."""
    img_dir = out / "images" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    records, hashes, redraws = [], set(), 0
    for index, slot in enumerate(slots):
        maker = make_caption if slot.task == "caption" else _MAKERS[slot.task]
        item, item_hashes, tries = _generate_item(maker, rng, ctx, slot, forbidden)
        redraws += tries
        paths = []
        for k, arr in enumerate(item.images, start=1):
            rel = f"images/{split}/{split}_{index:06d}_{k}.png"
            _save_png(arr, out / rel)
            paths.append(rel)
        hashes.update(item_hashes)
        records.append(_record(split, index, item, slot.task, paths))
    return records, hashes, redraws


def _write_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _validate_weights(weights: Mapping[str, float], tasks: Sequence[str]) -> None:
    unknown = sorted(set(weights) - set(tasks))
    if unknown:
        raise ValueError(f"train_weights names task(s) {unknown} that are not generated; tasks: {', '.join(tasks)}")
    bad = {t: w for t, w in weights.items() if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0}
    if bad or not any(weights.get(t, 0) > 0 for t in tasks):
        raise ValueError(f"train_weights must be non-negative numbers, at least one > 0; got {dict(weights)}")


def _validate_curriculum(curriculum: Mapping[str, Any], tasks: Sequence[str]) -> None:
    if set(curriculum) != {"share", "directions"}:
        raise ValueError(f"curriculum takes share and directions, got {sorted(curriculum)}")
    share, asked = curriculum["share"], list(curriculum["directions"])
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
        raise ValueError(f"curriculum share must be a fraction in (0, 1), got {share!r}")
    known = {d for ds in DIRECTIONS.values() for d in ds}
    if set(asked) - known:
        raise ValueError(f"curriculum names unknown direction(s) {sorted(set(asked) - known)}; "
                         f"valid: {', '.join(sorted(known))}")
    if not _first_phase_tasks(tasks, asked):
        raise ValueError(f"curriculum directions {asked} ask nothing of the tasks {list(tasks)}; "
                         "name at least one of their directions")


def _validate_directions(directions: Sequence[str], tasks: Sequence[str]) -> None:
    known = {d for ds in DIRECTIONS.values() for d in ds}
    if isinstance(directions, str) or set(directions) - known:
        raise ValueError(f"directions must be a list of: {', '.join(sorted(known))}; got {directions!r}")
    missing = [t for t in tasks if t in DIRECTIONS and not set(DIRECTIONS[t]) & set(directions)]
    if missing:
        raise ValueError(f"directions {list(directions)} leave task(s) {missing} nothing to ask; "
                         f"add one of: {', '.join(d for t in missing for d in DIRECTIONS[t])}")


def _validate(n_train: int, n_eval: int, n_captions: int, image_size: int, tasks: Sequence[str]) -> None:
    for name, value in (("n_train", n_train), ("n_eval", n_eval), ("n_captions", n_captions)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; valid tasks: {', '.join(TASKS)}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"duplicate task names in {list(tasks)}")
    if not tasks and (n_train or n_eval):
        raise ValueError(f"tasks is empty; choose from: {', '.join(TASKS)}")


def _task_counts(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        counts[r["task"]] = counts.get(r["task"], 0) + 1
    return counts


def generate(
    out_dir: str | Path,
    n_train: int,
    n_eval: int,
    seed: int = 0,
    image_size: int = 64,
    n_captions: int | None = None,
    tasks: Sequence[str] | None = None,
    config: Difficulty | None = None,
    train_weights: Mapping[str, float] | None = None,
    curriculum: Mapping[str, Any] | None = None,
    directions: Sequence[str] | None = None,
    mirror: bool = False,
) -> dict[str, Any]:
    """Write the synthetic dataset under ``out_dir`` and return a summary.

    ``train_weights`` ({task: weight}; tasks left out get 0) sets the train split's task shares;
    the eval split stays round robin, so every task is scored on the same number of items.
    ``curriculum`` ({"share": f, "directions": [...]}) makes the first ``f`` of the train split ask
    only those directions, of the tasks that have one (``curriculum_phase`` 0), and the rest every
    task and direction (phase 1), for a
    recipe with ``data.curriculum=true``; the eval split asks every direction.
    ``directions`` limits every split to those directions (None: all).
    ``mirror`` follows each train item of a two-way 2-image question (brighter / darker, ...) with
    the same two images asked the other way, answer swapped (:func:`_mirrored`); a curriculum's
    first phase and a ``directions`` limit that leaves out the other way are not mirrored. The
    ``n_train`` planned items come first in the count; the mirrored ones are extra.

    The summary has ``out_dir``, ``counts`` ({split: {task: n}}), ``images`` ({split: n_png}),
    ``files`` ({"train"|"eval"|"captions"|"meta": path}) and ``redraws`` (eval samples redrawn
    because an image matched a train/caption image; expected 0).
    """
    # A bare string would otherwise be split into letters, each an "unknown task".
    tasks = list(TASKS if tasks is None else [tasks] if isinstance(tasks, str) else tasks)
    n_captions = _caption_count(n_train, n_captions)
    _validate(n_train, n_eval, n_captions, image_size, tasks)
    if train_weights:
        _validate_weights(train_weights, tasks)
    if curriculum:
        _validate_curriculum(curriculum, tasks)
    if directions is not None:
        _validate_directions(directions, tasks)
    cfg = config or Difficulty()
    ctx = Ctx(image_size, cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # Independent streams: eval content does not depend on n_train, and splits share no draws.
    # A fourth stream for the mirrored questions: the other splits stay byte-identical with it off.
    seeds = np.random.SeedSequence(seed).spawn(4)
    train_rng, eval_rng, cap_rng, mirror_rng = (np.random.default_rng(s) for s in seeds)
    train_slots = _plan_train(n_train, tasks, cfg, train_rng, train_weights, curriculum, directions)
    train, train_h, _ = _generate_split(out, "train", train_slots, ctx, train_rng, set())
    if curriculum:
        first = round(n_train * curriculum["share"])
        for i, rec in enumerate(train):
            rec[PHASE_KEY] = 0 if i < first else 1
    mirrored = 0
    if mirror:
        train, mirrored = _with_mirrors(train, mirror_rng, directions)
    cap_slots = [Slot("caption", 1)] * n_captions
    captions, cap_h, _ = _generate_split(out, "captions", cap_slots, ctx, cap_rng, set())
    # Eval last, checked against everything a model may have been trained on.
    eval_slots = _plan_split(n_eval, tasks, cfg, eval_rng, directions=directions)
    evals, _, redraws = _generate_split(out, "eval", eval_slots, ctx, eval_rng, train_h | cap_h)

    splits = {"train": train, "eval": evals, "captions": captions}
    meta = {"version": VERSION, "seed": seed, "image_size": image_size, "tasks": tasks, "config": asdict(cfg)}
    if train_weights:  # only when set: the same seed without weights keeps its meta.json byte-identical
        meta["train_weights"] = dict(train_weights)
    if curriculum:
        meta["curriculum"] = _plain_curriculum(curriculum)
    if directions is not None:
        meta["directions"] = list(directions)
    if mirror:
        meta["mirrored"] = mirrored
    return _write_outputs(out, splits, meta, redraws)


def _other_direction(task: str, direction: str) -> str | None:
    """The opposite way of asking a two-way question (brighter -> darker); None for one-way ones."""
    others = [d for d in DIRECTIONS.get(task, {}) if d != direction]
    return others[0] if len(others) == 1 else None


def _mirrored(rec: dict[str, Any], direction: str, rng: np.random.Generator) -> dict[str, Any]:
    """``rec``'s two images asked ``direction`` instead: a question of that direction, the other
    image as the answer. The pair differs only in the question, so the answer can only be learned
    from the direction word (a model that answers by the property alone gets one of the two wrong)."""
    answer = next(o for o in rec["options"] if o != rec["answer"])
    return rec | {"id": rec["id"] + "-mirror", "answer": answer, "direction": direction,
                  "conversations": _conversations(2, mc_question(rng, direction, 2), answer)}


def _with_mirrors(train: list[dict[str, Any]], rng: np.random.Generator,
                  directions: Sequence[str] | None) -> tuple[list[dict[str, Any]], int]:
    """``train`` with each two-way 2-image record followed by its mirror (not in a curriculum's
    first phase, which asks one way on purpose, nor into a direction ``directions`` leaves out)."""
    out: list[dict[str, Any]] = []
    for rec in train:
        out.append(rec)
        other = _other_direction(rec["task"], rec.get("direction") or "")
        # Only the 2-image tasks are asked two ways (config.DIRECTIONS), so `other` implies 2 images.
        if other is not None and rec.get(PHASE_KEY) != 0 and (directions is None or other in directions):
            out.append(_mirrored(rec, other, rng))
    return out, len(out) - len(train)


def _plain_curriculum(curriculum: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not curriculum:
        return None
    return {"share": float(curriculum["share"]), "directions": list(curriculum["directions"])}


def _caption_count(n_train: int, n_captions: int | None) -> int:
    return n_train if n_captions is None else n_captions


def settings_mismatch(out_dir: str | Path, *args: Any, **kwargs: Any) -> str | None:
    """None when ``out_dir`` holds what :func:`generate` writes for these arguments (read from its
    meta.json, which is written last); otherwise why not, in words. Takes :func:`generate`'s
    arguments, bound by its signature (one list of settings and defaults)."""
    bound = inspect.signature(generate).bind(out_dir, *args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    meta_file = Path(out_dir) / "meta.json"
    if not meta_file.is_file():
        return f"no {meta_file} yet"
    meta = json.loads(meta_file.read_text())
    weights, tasks, directions = a["train_weights"], a["tasks"], a["directions"]
    want = {"seed": a["seed"], "image_size": a["image_size"], "train_weights": dict(weights) if weights else None,
            "tasks": list(TASKS if tasks is None else tasks), "version": VERSION,
            "curriculum": _plain_curriculum(a["curriculum"]),
            "directions": list(directions) if directions is not None else None,
            "mirror": bool(a["mirror"]),
            "config": json.loads(json.dumps(asdict(a["config"] or Difficulty()))),
            "counts": {"train": a["n_train"], "eval": a["n_eval"],
                       "captions": _caption_count(a["n_train"], a["n_captions"])}}
    have = {"seed": meta.get("seed"), "image_size": meta.get("image_size"), "train_weights": meta.get("train_weights"),
            "tasks": meta.get("tasks"), "version": meta.get("version"), "curriculum": meta.get("curriculum"),
            "directions": meta.get("directions"), "mirror": "mirrored" in meta, "config": meta.get("config"),
            "counts": {split: sum(c.values()) - (meta.get("mirrored", 0) if split == "train" else 0)
                       for split, c in meta.get("counts", {}).items()}}
    return None if have == want else f"it was made with {have}, not {want}"


def _write_outputs(
    out: Path, splits: dict[str, list[dict[str, Any]]], meta: dict[str, Any], redraws: int
) -> dict[str, Any]:
    """Write the split JSONs and meta.json; return the summary :func:`generate` documents."""
    files = {name: out / f"{name}.json" for name in (*splits, "meta")}
    for name, records in splits.items():
        _write_json(records, files[name])
    summary = {
        "out_dir": str(out),
        "counts": {name: _task_counts(records) for name, records in splits.items()},
        # PNG files, not references: a mirrored record reuses its original's two files.
        "images": {name: len({p for r in records for p in r["image"]}) for name, records in splits.items()},
        "files": {k: str(v) for k, v in files.items()},
        "redraws": redraws,
    }
    _write_json(meta | {"counts": summary["counts"], "images": summary["images"]}, files["meta"])
    return summary


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _task_list(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown task(s) {unknown}; valid tasks: {', '.join(TASKS)}")
    return tasks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``synth`` options to ``parser`` (used by the main CLI and by :func:`main`)."""
    parser.add_argument("out", type=Path, help="output directory (created if missing)")
    parser.add_argument("--train", type=_non_negative_int, required=True, help="number of train samples")
    parser.add_argument("--eval", type=_non_negative_int, required=True, help="number of eval samples")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--captions", type=_non_negative_int, default=None,
                        help="number of stage-1 caption samples (default: same as --train)")
    parser.add_argument("--tasks", type=_task_list, default=None,
                        help=f"comma-separated subset of: {','.join(TASKS)} (default: all)")


def run(args: argparse.Namespace) -> int:
    """Generate from parsed arguments, print a short summary; 0 on success, 2 on bad arguments."""
    start = time.perf_counter()
    try:
        summary = generate(args.out, args.train, args.eval, seed=args.seed, image_size=args.image_size,
                           n_captions=args.captions, tasks=args.tasks)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    print(f"wrote synthetic data to {summary['out_dir']} in {elapsed:.1f}s")
    for split, counts in summary["counts"].items():
        per_task = ", ".join(f"{t}={n}" for t, n in counts.items()) or "none"
        print(f"  {split}: {sum(counts.values())} samples, {summary['images'][split]} images ({per_task})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llava_compare.synth", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
