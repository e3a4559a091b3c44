"""Metrics: normalised exact match, token F1, and the summary table.

Record kinds (one dict per item, as written to ``predictions.jsonl``):

* multiple choice -- has ``correct`` (bool) and ``chance`` (1 / number of options); in generate mode
  also ``parsed`` (False when no option could be read from the generated text: counted as wrong);
* open -- has ``exact_match`` and ``f1``.

Both carry ``task``, ``num_images`` and optionally ``qa_type``, ``direction`` (which way the
question asks, e.g. "brighter" | "darker") and ``groups`` (category axis -> label, e.g.
``{"question type": "How", "concern": "Distortion"}``). Records with ``labelled: false``
(no gold answer: a withheld test split) are predictions only: counted, never scored. Open records
judged by an LLM (``--judge``) carry ``judge_score`` (0-5, None when the judge's reply had no score).
"""

from __future__ import annotations

import string
from collections import defaultdict
from typing import Any, Sequence

from .swaps import format_swap_table


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD-style)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def token_f1(pred: str, gold: str) -> float:
    p, g = normalize(pred).split(), normalize(gold).split()
    common = sum(min(p.count(w), g.count(w)) for w in set(p))
    if not p or not g or not common:
        return float(p == g)
    prec, rec = common / len(p), common / len(g)
    return 2 * prec * rec / (prec + rec)


def is_mc(record: dict[str, Any]) -> bool:
    return "correct" in record


def is_wrong(record: dict[str, Any]) -> bool:
    """Wrong MC answer (unparseable included) or a free-form answer that is not an exact match;
    never an item without a gold answer."""
    if record.get("labelled") is False:
        return False
    return not record["correct"] if is_mc(record) else not record.get("exact_match", False)


def _mc_stats(rs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    n = len(rs)
    out: dict[str, Any] = {"n": n, "accuracy": sum(bool(r["correct"]) for r in rs) / max(n, 1),
                           "chance": sum(r["chance"] for r in rs) / max(n, 1)}
    if any("parsed" in r for r in rs):
        out["unparsed"] = sum(not r.get("parsed", True) for r in rs)
    return out


def _open_stats(rs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    n = len(rs)
    out = {"n": n, "exact_match": sum(bool(r["exact_match"]) for r in rs) / max(n, 1),
           "f1": sum(r["f1"] for r in rs) / max(n, 1)}
    judged = [r for r in rs if "judge_score" in r]
    if judged:
        scores = [r["judge_score"] for r in judged if r["judge_score"] is not None]
        out.update(judge_mean=sum(scores) / len(scores) if scores else None,
                   judge_unparsed=len(judged) - len(scores))
    return out


def _stats(rs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Multiple-choice stats, or free-form ones; a group holding both (a Mantis-Eval data source
    with short-answer rows) gets the free-form items' stats under ``free_form``."""
    mc = [r for r in rs if is_mc(r)]
    if not mc:
        return _open_stats(rs)
    out = _mc_stats(mc)
    if len(mc) < len(rs):
        out["free_form"] = _open_stats([r for r in rs if not is_mc(r)])
    return out


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-task accuracy (MC) or EM/F1 (open), per question type, per task and direction
    (``directions``: task -> direction -> stats, for records with a direction), per image count
    of the multiple-choice items (``image_counts``), and the overall numbers.

    ``overall_2image_mc`` (the demo's headline: the 2-image multiple-choice items) keeps exactly
    ``{n, accuracy, chance}``; ``overall_mc`` is over every multiple-choice item.
    """
    unlabelled = [r for r in records if r.get("labelled") is False]
    records = [r for r in records if r.get("labelled") is not False]
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_group: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    by_direction: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_task[str(r["task"])].append(r)
        if r.get("direction") is not None:
            by_direction[str(r["task"])][str(r["direction"])].append(r)
        if r.get("qa_type") is not None and is_mc(r):
            by_type[str(r["qa_type"])].append(r)
        for axis, label in (r.get("groups") or {}).items():
            by_group[axis][str(label)].append(r)
    tasks = {task: _stats(rs) for task, rs in sorted(by_task.items())}
    mc_all = [r for r in records if is_mc(r)]
    mc2 = [r for r in mc_all if r["num_images"] == 2]
    summary: dict[str, Any] = {
        "n": len(records) + len(unlabelled),
        "n_scored": len(records),
        "tasks": tasks,
        "overall_2image_mc": {k: v for k, v in _mc_stats(mc2).items() if k in ("n", "accuracy", "chance")},
        "overall_mc": _mc_stats(mc_all),
    }
    if mc_all:
        counts = sorted({r["num_images"] for r in mc_all})
        summary["image_counts"] = {str(k): _mc_stats([r for r in mc_all if r["num_images"] == k]) for k in counts}
    if by_direction:
        summary["directions"] = {t: {d: _stats(rs) for d, rs in sorted(ds.items())}
                                 for t, ds in sorted(by_direction.items())}
    if by_type:
        summary["qa_types"] = {t: _mc_stats(rs) for t, rs in sorted(by_type.items())}
    if by_group:
        summary["groups"] = {axis: {label: _stats(rs) for label, rs in sorted(labels.items())}
                             for axis, labels in by_group.items()}
    if unlabelled:
        summary["unlabelled"] = len(unlabelled)
    open_rs = [r for r in records if not is_mc(r)]
    if open_rs:
        summary["open"] = _open_stats(open_rs)
    return summary


def _mc_row(name: str, m: dict[str, Any], width: int = 12) -> str:
    row = f"{name:<{width}} {m['n']:>5}  {m['accuracy']:>8.3f}  {m['chance']:>6.3f}"
    return row + (f"  ({m['unparsed']} unparseable)" if m.get("unparsed") else "")


def _open_row(name: str, m: dict[str, Any], width: int = 12) -> str:
    row = f"{name:<{width}} {m['n']:>5}  exact match {m['exact_match']:.3f}, token F1 {m['f1']:.3f}"
    if "judge_mean" in m:
        mean = "n/a" if m["judge_mean"] is None else f"{m['judge_mean']:.2f}"
        row += f", judge {mean}/5 ({m['judge_unparsed']} unparsed)"
    return row


def _table(title: str, rows: dict[str, dict[str, Any]]) -> list[str]:
    width = max([12, len(title), *map(len, rows)])  # long "task direction" names keep the columns aligned
    lines = [f"{title:<{width}} {'n':>5}  {'accuracy':>8}  {'chance':>6}"]
    for k, m in rows.items():
        lines.append(_mc_row(k, m, width) if "accuracy" in m else _open_row(k, m, width))
        if "free_form" in m:
            lines.append(_open_row("  +free-form", m["free_form"], width))
    return lines


def _notes(summary: dict[str, Any]) -> list[str]:
    """Skipped rows per reason and unlabelled items: what the numbers above do not cover."""
    lines = []
    skipped = summary.get("skipped") or {}
    if skipped:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items(), key=lambda kv: -kv[1]))
        lines.append(f"skipped (not scored): {sum(skipped.values())} rows: {reasons}")
    if summary.get("unlabelled"):
        lines.append(f"no gold answer (predicted, not scored; see submission.json): {summary['unlabelled']} items")
    return lines


def format_summary(summary: dict[str, Any]) -> str:
    """The per-task table, per-category tables, skipped rows per reason; the last line is
    ``overall accuracy: X.XXX (chance Y.YYY)`` over the 2-image multiple-choice items (over all
    multiple-choice items when none has two images)."""
    lines = _table("task", summary["tasks"])
    if summary.get("directions"):
        lines += _table("direction", {f"{t} {d}": m for t, ds in summary["directions"].items() for d, m in ds.items()})
    if len(summary.get("image_counts") or {}) > 1:
        lines += _table("images", {f"{k} images": m for k, m in summary["image_counts"].items()})
    if summary.get("qa_types"):
        lines += _table("QA type", summary["qa_types"])
    for axis, rows in (summary.get("groups") or {}).items():
        lines += _table(axis, rows)
    lines += _notes(summary)
    if summary.get("swap"):
        lines.append(format_swap_table(summary["swap"]))
    o2, mc = summary["overall_2image_mc"], summary.get("overall_mc", summary["overall_2image_mc"])
    if mc.get("unparsed"):
        lines.append(f"unparseable generated answers (counted wrong): {mc['unparsed']} of {mc['n']}")
    if o2["n"] == 0 and mc["n"] == 0:
        if summary.get("open"):
            op = summary["open"]
            lines.append(f"overall = the {op['n']} free-form items")
            judge = f", judge {op['judge_mean']:.2f}/5" if op.get("judge_mean") is not None else ""
            lines.append(f"overall exact match: {op['exact_match']:.3f}, token F1 {op['f1']:.3f}{judge}")
        return "\n".join(lines)
    if o2["n"] == 0:
        lines.append(f"overall = the {mc['n']} multiple-choice items (none has two images)")
        o2 = mc
    else:
        if mc["n"] != o2["n"]:
            lines.append(f"all {mc['n']} multiple-choice items: accuracy {mc['accuracy']:.3f} "
                         f"(chance {mc['chance']:.3f})")
        lines.append(f"overall = the {o2['n']} two-image multiple-choice items")
    lines.append(f"overall accuracy: {o2['accuracy']:.3f} (chance {o2['chance']:.3f})")
    return "\n".join(lines)
