"""Order swaps: multiple-choice items scored again with their images in other orders.

An item takes part when its options name its images one to one ("Image 1".."Image k", "the first
image".."the fourth image"; k >= 2), it has a gold answer, and its question proper does not name an
image by position (the option list itself, "Answer with Image 1 or Image 2", is allowed): permuting
the images then moves the gold option with the gold image and leaves every other word true. Items
that do not qualify are left out of the swap metrics and counted by reason (``swap_excluded`` on the
record, ``excluded`` in the summary): a benchmark option such as "They are the same" or "The left
image is clearer" does not map one option to one image.

An order is a tuple: position ``p`` of the permuted item shows the original image ``order[p]``. The
N orders of an item are chosen from its id (the same on every rank and every run): distinct
non-identity permutations, those that move the gold image to a position it has not had yet first,
then those that leave fewest images in place.
A k-image item has only k! - 1 other orders (one for two images): N is capped there.

The permuted items are ordinary samples, scored with the others in one pass (so loglik, generate
and sharded scoring need nothing of their own); :func:`attach` folds their records back into the
original record as ``swaps``. The metrics are :func:`swap_summary`'s.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..data.rows import DEFAULT_MARKER_PATTERN
from ..data.sample import Message, Sample

_ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "1st": 1, "2nd": 2, "3rd": 3, "4th": 4}
_NOUN = r"(?:image|picture|photo)"
_OPTION_RE = re.compile(rf"(?:the\s+)?{_NOUN}\s*#?\s*(\d+)|(?:the\s+)?(\w+)\s+{_NOUN}", re.I)
# a position named in the question text: numbered, ordinal or spatial
_REFERENCE_RE = re.compile(
    rf"\b{_NOUN}\s*#?\s*\d+\b|\b(?:first|second|third|fourth|1st|2nd|3rd|4th|last|left|right|top|bottom|"
    rf"middle|former|latter)\s+{_NOUN}", re.I)
_SEPARATOR = r"\s*(?:,\s*(?:or\s+|and\s+)?|\s(?:or|and)\s|/)\s*"


@dataclass(frozen=True)
class Variant:
    """One permuted copy of ``samples[parent]``."""

    parent: int
    order: tuple[int, ...]
    sample: Sample


def option_images(options: Sequence[str], k: int) -> list[int] | None:
    """The 0-based image each option names, when the options name each of the ``k`` images once."""
    named = []
    for option in options:
        m = _OPTION_RE.fullmatch(option.strip().rstrip(".").strip())
        if m is None:
            return None
        number = int(m.group(1)) if m.group(1) else _ORDINALS.get(m.group(2).lower())
        if number is None:
            return None
        named.append(number - 1)
    return named if sorted(named) == list(range(k)) else None


def names_an_image(question: str, options: Sequence[str]) -> bool:
    """Whether the question refers to an image by its position, besides listing the options and
    labelling the images ("Image 1: <image>": the label moves with the position, so it stays true)."""
    listing = _SEPARATOR.join(re.escape(o.strip()) for o in options)
    rest = re.sub(DEFAULT_MARKER_PATTERN, " ", re.sub(listing, " ", question, flags=re.I))
    return _REFERENCE_RE.search(rest) is not None


def exclusion(sample: Sample) -> str | None:
    """Why a prepared multiple-choice sample cannot be scored in other orders, or None."""
    m = sample.meta
    k = len(sample.images)
    if k < 2:
        return "fewer_than_2_images"
    if m.get("gold_index") is None:
        return "unlabelled"
    if option_images(m["options"], k) is None:
        return "options_not_one_per_image"
    if names_an_image(m.get("question", ""), m["options"]):
        return "question_names_an_image"
    return None


def choose_orders(item_id: str, k: int, gold_image: int, n: int) -> list[tuple[int, ...]]:
    """Up to ``n`` distinct non-identity orders of ``k`` images, drawn from ``item_id``; each next one
    puts the gold image where it has been least often (the original position counts once) and,
    among those, moves as many images as it can."""
    rng = random.Random(hashlib.sha256(item_id.encode()).digest())
    candidates = [p for p in itertools.permutations(range(k)) if p != tuple(range(k))]
    rng.shuffle(candidates)
    seen = Counter({gold_image: 1})
    chosen: list[tuple[int, ...]] = []
    while candidates and len(chosen) < n:
        # the gold image where it has been least often, then as few images left in place as possible
        # (an image kept in place cannot tell a position preference from a consistent answer)
        best = min(candidates, key=lambda p: (seen[p.index(gold_image)], sum(a == b for a, b in enumerate(p))))
        candidates.remove(best)
        chosen.append(best)
        seen[best.index(gold_image)] += 1
    return chosen


def permute(sample: Sample, order: Sequence[int]) -> Sample:
    """``sample`` with its images in ``order`` and its gold option moved with the gold image."""
    m = sample.meta
    images_of = option_images(m["options"], len(sample.images))
    assert images_of is not None, "permute() takes items exclusion() lets through"
    old = m["gold_index"]
    new = images_of.index(list(order).index(images_of[old]))
    messages = list(sample.messages)
    # the stand-in answer turn follows the gold answer, so the permuted item reads consistently
    if messages and messages[-1].role == "assistant":
        last = messages[-1].content
        for texts in (m["choices"], m["options"]):
            if last == texts[old]:
                messages[-1] = Message("assistant", texts[new])
                break
    meta = {**m, "gold_index": new, "answer": m["options"][new], "order": list(order), "swap_of": sample.id}
    name = "".join(str(i + 1) for i in order)
    return Sample(f"{sample.id}@order{name}", messages, images=[sample.images[i] for i in order],
                  has_markers=sample.has_markers, meta=meta)


def variants(samples: Sequence[Sample], n: int) -> tuple[list[Variant], Counter[str]]:
    """The permuted copies of every eligible multiple-choice sample (``n`` orders each, capped at
    k! - 1) and the excluded multiple-choice samples counted by reason. Also marks each
    multiple-choice sample's meta with ``swap_excluded`` or ``option_images``."""
    out: list[Variant] = []
    excluded: Counter[str] = Counter()
    if n <= 0:
        return out, excluded
    for i, s in enumerate(samples):
        if s.meta.get("kind") != "mc":
            continue
        reason = exclusion(s)
        if reason:
            s.meta["swap_excluded"] = reason
            excluded[reason] += 1
            continue
        images_of = option_images(s.meta["options"], len(s.images))
        s.meta["option_images"] = images_of
        gold_image = images_of[s.meta["gold_index"]]  # type: ignore[index]
        out += [Variant(i, order, permute(s, order))
                for order in choose_orders(s.id, len(s.images), gold_image, n)]
    return out, excluded


def attach(records: list[dict[str, Any]], samples: Sequence[Sample], found: Sequence[Variant],
           variant_records: Sequence[dict[str, Any]]) -> None:
    """Fold the permuted items' records into their original's record: ``option_images`` and a
    ``swaps`` list of ``{order, gold_index, pred_index, correct}`` (+ ``generated`` / ``scores``);
    excluded items get ``swap_excluded``."""
    for rec, s in zip(records, samples):
        if "swap_excluded" in s.meta:
            rec["swap_excluded"] = s.meta["swap_excluded"]
        elif "option_images" in s.meta:
            rec["option_images"] = s.meta["option_images"]
            rec["swaps"] = []
    for v, vr in zip(found, variant_records):
        entry = {"order": list(v.order), "gold_index": vr["gold_index"], "pred_index": vr["pred_index"],
                 "correct": vr["correct"]}
        entry.update({k: vr[k] for k in ("generated", "scores") if k in vr})
        records[v.parent]["swaps"].append(entry)


def score_in_orders(score: Callable[[Sequence[Sample]], list[dict[str, Any]]], samples: Sequence[Sample],
                    n: int) -> tuple[list[dict[str, Any]], Counter[str]]:
    """``score`` (samples -> one record each, in order) over ``samples`` and their permuted copies
    in one call; returns the original samples' records, the copies folded in (:func:`attach`), and
    the excluded multiple-choice items by reason."""
    found, excluded = variants(samples, n)
    records = score([*samples, *(v.sample for v in found)])
    originals = records[:len(samples)]
    if n > 0:
        attach(originals, samples, found, records[len(samples):])
    return originals, excluded


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def _orders(rec: dict[str, Any]) -> list[tuple[list[int], int, int | None, bool]]:
    """(order, gold position, picked position or None, correct) for the original order and each swap."""
    images_of = rec["option_images"]
    k = len(images_of)
    rows = [(list(range(k)), rec["gold_index"], rec.get("pred_index"), bool(rec["correct"]))]
    rows += [(s["order"], s["gold_index"], s["pred_index"], bool(s["correct"])) for s in rec["swaps"]]
    return [(order, images_of[gold], None if pred is None else images_of[pred], ok)
            for order, gold, pred, ok in rows]


def consistent(rec: dict[str, Any]) -> bool:
    """Whether the same image (by its original position) was picked in every scored order; an
    unparsed answer counts as a different pick."""
    chosen = {None if pick is None else order[pick] for order, _, pick, _ in _orders(rec)}
    return len(chosen) == 1 and None not in chosen


def _stats(recs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    n_pairs = n_consistent = correct_first = correct_all = unparsed = 0
    pick: dict[int, list[int]] = {}
    gold: dict[int, list[int]] = {}
    for rec in recs:
        rows = _orders(rec)
        k = len(rec["option_images"])
        pick.setdefault(k, [0] * k)
        gold.setdefault(k, [0] * k)
        for _, gold_pos, pick_pos, ok in rows:
            n_pairs += 1
            correct_all += ok
            gold[k][gold_pos] += 1
            if pick_pos is None:
                unparsed += 1
            else:
                pick[k][pick_pos] += 1
        correct_first += rows[0][3]
        n_consistent += consistent(rec)
    n = len(recs)
    positions = {}
    for k in sorted(pick):
        total = sum(gold[k])
        p = [c / total for c in pick[k]]
        g = [c / total for c in gold[k]]
        positions[str(k)] = {"n": total, "pick": p, "gold": g, "excess": max(a - b for a, b in zip(p, g))}
    out = {"n": n, "n_scored": n_pairs, "accuracy": correct_first / max(n, 1),
           "accuracy_all_orders": correct_all / max(n_pairs, 1), "consistency": n_consistent / max(n, 1),
           "chance": sum(1 / len(r["option_images"]) for r in recs) / max(n, 1), "positions": positions,
           "max_position_excess": max((v["excess"] for v in positions.values()), default=None)}
    if unparsed:
        out["unparsed"] = unparsed
    return out


def swap_summary(records: Sequence[dict[str, Any]], requested: int, excluded: Counter[str] | dict[str, int]
                 ) -> dict[str, Any]:
    """The swap metrics, overall, per task, per (task, direction) and per image count.

    Per group: ``accuracy`` (original order), ``accuracy_all_orders`` (every scored order),
    ``consistency`` (share of items where the same *image* is picked in every order; an unparsed
    answer breaks it), ``positions`` (per image count k: ``pick`` = share of the scored orders
    whose answer is position p, ``gold`` = share whose gold answer is, ``excess`` = the largest
    pick - gold) and ``max_position_excess`` (the largest excess over k)."""
    recs = [r for r in records if "swaps" in r and r.get("labelled") is not False]
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_dir: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    by_k: dict[str, list[dict[str, Any]]] = defaultdict(list)
    orders: dict[str, int] = {}
    for r in recs:
        by_task[str(r["task"])].append(r)
        if r.get("direction") is not None:
            by_dir[str(r["task"])][str(r["direction"])].append(r)
        k = str(len(r["option_images"]))
        by_k[k].append(r)
        orders[k] = max(orders.get(k, 0), len(r["swaps"]))
    out: dict[str, Any] = {"orders_requested": requested, "orders_scored": dict(sorted(orders.items())),
                           "excluded": dict(excluded), "overall": _stats(recs),
                           "tasks": {t: _stats(rs) for t, rs in sorted(by_task.items())},
                           "image_counts": {k: _stats(rs) for k, rs in sorted(by_k.items())}}
    if by_dir:
        out["directions"] = {t: {d: _stats(rs) for d, rs in sorted(ds.items())} for t, ds in sorted(by_dir.items())}
    return out


def format_rates(positions: dict[str, dict[str, Any]]) -> str:
    """``k=2 pick .62/.38 gold .50/.50`` per image count: the position pick rates as one string."""
    def rates(xs: Sequence[float]) -> str:
        return "/".join(f"{x:.2f}" for x in xs)

    return "; ".join(f"k={k} pick {rates(v['pick'])} gold {rates(v['gold'])}" for k, v in positions.items())


def format_swap_table(swap: dict[str, Any]) -> str:
    """The swap metrics as a terminal table: one row per task (and direction), per image count, overall."""
    head = (f"{'order swaps':<22} {'n':>4} {'chance':>6} {'acc':>6} {'acc/all':>7} {'consist':>7} {'max+':>6}  "
            "position pick rates vs gold rates")
    lines = [f"order swaps: {swap['orders_requested']} other order(s) per item "
             f"(scored: {', '.join(f'{k} images: {v}' for k, v in swap['orders_scored'].items()) or 'none'})",
             head]

    def row(name: str, m: dict[str, Any]) -> str:
        excess = "" if m["max_position_excess"] is None else f"{m['max_position_excess']:+.3f}"
        # several image counts: their rates are on the per-image-count rows above
        rates = format_rates(m["positions"]) if len(m["positions"]) <= 1 else "(per image count above)"
        return (f"{name:<22} {m['n']:>4} {m['chance']:>6.3f} {m['accuracy']:>6.3f} {m['accuracy_all_orders']:>7.3f} "
                f"{m['consistency']:>7.3f} {excess:>6}  {rates}")

    directions = swap.get("directions", {})
    for task, m in swap["tasks"].items():
        lines.append(row(task, m))
        lines += [row(f"  {d}", dm) for d, dm in directions.get(task, {}).items()]
    if len(swap["image_counts"]) > 1:
        lines += [row(f"{k} images", m) for k, m in swap["image_counts"].items()]
    lines.append(row("all", swap["overall"]))
    if swap["excluded"]:
        why = ", ".join(f"{k} {v}" for k, v in sorted(swap["excluded"].items()))
        lines.append(f"not scored in other orders: {why}")
    return "\n".join(lines)
