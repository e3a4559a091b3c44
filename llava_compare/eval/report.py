"""Eval outputs: ``results.json``, ``predictions.jsonl``, ``submission.json``, a self-contained
``report.html``, wandb.

``submission.json`` maps each item id to its prediction -- the option letter for lettered multiple
choice (what Q-Bench2 and Mantis-Eval score), the option text otherwise, the answer text for free-form
items: the file to send for a split whose answers are withheld (Q-Bench2 ``test``).

``report.html`` needs nothing but itself: images are embedded as base64 PNG thumbnails, the CSS is
inline, there are no scripts and no external links. Items are listed wrong answers first (wrong or
unparseable multiple choice, free-form answers that are not an exact match), each with its images
side by side, the question, the options (gold and predicted marked), the prediction and the gold
answer. Every item is a ``<div class="item ..." data-correct="0|1">`` so tools can check the order.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ..data.checks import load_image
from ..data.sample import Sample
from .metrics import is_mc, is_wrong
from .swaps import consistent

THUMB_PX = 224  # longest side of an embedded thumbnail

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 8px} h2{font-size:18px;margin:24px 0 8px}
.meta{font-size:13px;color:#555} .meta code{background:#eee;padding:1px 4px;border-radius:3px;word-break:break-all}
table.summary{border-collapse:collapse;margin:8px 0;font-size:14px}
table.summary th,table.summary td{border:1px solid #ccc;padding:3px 10px;text-align:right}
table.summary th:first-child,table.summary td:first-child{text-align:left}
.item{display:flex;gap:16px;align-items:flex-start;background:#fff;border:1px solid #ddd;border-left:6px solid #2e7d32;
      border-radius:4px;padding:10px;margin:10px 0}
.item.wrong{border-left-color:#c62828}
.imgs{display:flex;gap:8px;flex:none}
figure{margin:0;text-align:center;font-size:12px;color:#555}
figure img{height:128px;width:auto;min-width:64px;image-rendering:pixelated;border:1px solid #ccc;display:block}
.text{font-size:14px;min-width:0} .q{font-weight:600;white-space:pre-wrap;margin:0 0 6px}
.opts{margin:4px 0 6px 0;padding-left:4px;list-style:none} .opts li.gold{color:#2e7d32;font-weight:600}
.opts li.pred:not(.gold){color:#c62828} .tag{font-size:11px;font-weight:600;margin-left:6px}
.verdict{font-weight:700} .wrong .verdict{color:#c62828} .right .verdict{color:#2e7d32}
.small{font-size:12px;color:#666}
"""


def thumbnail_b64(image: Any, size: int = THUMB_PX) -> str:
    """A path or PIL image -> base64 PNG, longest side at most ``size`` px."""
    im = load_image(image)
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def side_by_side(images: Sequence[Any], height: int = 128, gap: int = 4) -> Image.Image:
    """The item's images scaled to one height and pasted left to right (for wandb tables)."""
    ims = [load_image(im) for im in images]
    ims = [im.resize((max(1, round(im.width * height / im.height)), height), Image.NEAREST) for im in ims]
    canvas = Image.new("RGB", (sum(im.width for im in ims) + gap * max(len(ims) - 1, 0), height), "white")
    x = 0
    for im in ims:
        canvas.paste(im, (x, 0))
        x += im.width + gap
    return canvas


def write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def write_outputs(out_dir: str | Path, records: Sequence[dict[str, Any]], samples: Sequence[Sample],
                  summary: dict[str, Any], run_info: dict[str, Any] | None = None,
                  report_max_items: int | None = 1000) -> Path:
    """``results.json`` (run info + metrics), ``predictions.jsonl`` and ``report.html`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {**(run_info or {}), "metrics": summary}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    write_jsonl(out / "predictions.jsonl", records)
    (out / "submission.json").write_text(json.dumps(submission(records), indent=1))
    (out / "report.html").write_text(render_html(records, samples, summary, run_info or {}, report_max_items),
                                     encoding="utf-8")
    return out


def submission(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{id: prediction}``: the letter for lettered multiple choice (None when unparseable)."""
    return {str(r["id"]): r["pred_letter"] if "pred_letter" in r else r.get("prediction") for r in records}


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _summary_table(title: str, rows: dict[str, dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = (f"<tr><th>{_e(title)}</th><th>n</th><th>accuracy</th><th>chance</th><th>exact match</th>"
            "<th>token F1</th><th>unparseable</th></tr>")
    body = []
    for name, m in rows.items():
        cells = [m.get("accuracy"), m.get("chance"), m.get("exact_match"), m.get("f1")]
        fmt = ["" if v is None else f"{v:.3f}" for v in cells]
        body.append(f"<tr><td>{_e(name)}</td><td>{m['n']}</td>" + "".join(f"<td>{v}</td>" for v in fmt)
                    + f"<td>{_e(m.get('unparsed', ''))}</td></tr>")
    return f"<table class=\"summary\">{head}{''.join(body)}</table>"


def _swap_table(swap: dict[str, Any] | None) -> str:
    """The order-swap metrics: one row per task (and direction), per image count, and overall."""
    if not swap:
        return ""
    rows = []
    for task, m in swap["tasks"].items():
        rows.append((task, m))
        rows += [(f"{task} / {d}", dm) for d, dm in swap.get("directions", {}).get(task, {}).items()]
    rows += [(f"{k} images", m) for k, m in swap["image_counts"].items()] + [("all", swap["overall"])]
    head = ("<tr><th>order swaps</th><th>n</th><th>accuracy</th><th>accuracy, all orders</th><th>consistency</th>"
            "<th>chance</th><th>position pick rate (gold rate)</th><th>max position excess</th></tr>")
    body = []
    for name, m in rows:
        rates = "; ".join(f"{k} images: " + ", ".join(f"{p:.2f} ({g:.2f})" for p, g in zip(v["pick"], v["gold"]))
                          for k, v in m["positions"].items())
        excess = "" if m["max_position_excess"] is None else f"{m['max_position_excess']:+.3f}"
        body.append(f"<tr><td>{_e(name)}</td><td>{m['n']}</td><td>{m['accuracy']:.3f}</td>"
                    f"<td>{m['accuracy_all_orders']:.3f}</td><td>{m['consistency']:.3f}</td><td>{m['chance']:.3f}</td>"
                    f"<td>{_e(rates)}</td><td>{excess}</td></tr>")
    excluded = ", ".join(f"{k} {v}" for k, v in sorted(swap["excluded"].items()))
    note = (f'<p class="small">{swap["orders_requested"]} other image order(s) per item (capped at k!-1); '
            f'not scored in other orders: {_e(excluded or "none")}</p>')
    return f"<h2>Order swaps</h2>{note}<table class=\"summary\">{head}{''.join(body)}</table>"


def _swaps_html(rec: dict[str, Any]) -> str:
    """One line per other image order the item was scored in: the order and the option picked there."""
    if not rec.get("swaps"):
        return ""
    parts = []
    for sw in rec["swaps"]:
        pick = "unparseable" if sw["pred_index"] is None else rec["options"][sw["pred_index"]]
        mark = "right" if sw["correct"] else "wrong"
        parts.append(f"images ({', '.join(str(i + 1) for i in sw['order'])}): {_e(pick)} ({mark})")
    return f'<div class="small">other orders: {"; ".join(parts)}</div>'


def _item_html(rec: dict[str, Any], sample: Sample) -> str:
    wrong = is_wrong(rec)
    figs = "".join(
        f'<figure><img src="data:image/png;base64,{thumbnail_b64(im)}" alt="Image {k}">'
        f"<figcaption>Image {k}</figcaption></figure>"
        for k, im in enumerate(sample.images, 1))
    parts = [f'<p class="q">{_e(rec.get("question"))}</p>']
    if "options" in rec:  # multiple choice, scored or not
        letters = rec.get("lettered")
        lis = []
        for i, opt in enumerate(rec["options"]):
            cls = " ".join(c for c, on in (("gold", i == rec["gold_index"]), ("pred", i == rec.get("pred_index"))) if on)
            label = f"{chr(65 + i)}. {opt}" if letters else opt
            score = f' <span class="small">({rec["scores"][i]:.2f})</span>' if "scores" in rec else ""
            tags = "".join(f'<span class="tag">{t}</span>' for t, on in (
                ("&#10003; gold", i == rec["gold_index"]), ("&#8592; predicted", i == rec.get("pred_index"))) if on)
            lis.append(f'<li class="{cls}">{_e(label)}{score}{tags}</li>')
        parts.append(f'<ul class="opts">{"".join(lis)}</ul>')
        pred = rec.get("prediction")
        if pred is None:
            pred = "unparseable"
        parts.append(f"<div><b>Prediction:</b> {_e(pred)} &nbsp; <b>Gold:</b> {_e(rec.get('answer'))}</div>")
        if "generated" in rec:
            parts.append(f'<div class="small">generated: &ldquo;{_e(rec["generated"])}&rdquo;</div>')
        if rec.get("margin") is not None:
            parts.append(f'<div class="small">log-likelihood margin: {rec["margin"]:.3f}</div>')
        parts.append(_swaps_html(rec))
        verdict = "wrong" if wrong else "correct" if is_mc(rec) else "no gold answer"
    else:
        parts.append(f"<div><b>Prediction:</b> {_e(rec.get('prediction'))}</div>"
                     f"<div><b>Gold:</b> {_e(rec.get('answer'))}</div>"
                     f'<div class="small">token F1 {rec.get("f1", 0):.3f}</div>')
        if "judge_score" in rec:
            parts.append(f'<div class="small">judge: {_e(rec["judge_score"])}/5 '
                         f'(&ldquo;{_e(rec.get("judge_reply"))}&rdquo;)</div>')
        verdict = ("not an exact match" if wrong else "exact match" if "exact_match" in rec
                   else "no gold answer")
    tags = " &middot; ".join(_e(t) for t in (rec.get("task"), rec.get("qa_type"), rec.get("id")) if t is not None)
    parts.insert(0, f'<div class="small"><span class="verdict">{verdict}</span> &middot; {tags}</div>')
    return (f'<div class="item {"wrong" if wrong else "right"}" data-correct="{0 if wrong else 1}" '
            f'data-id="{_e(rec.get("id"))}"><div class="imgs">{figs}</div><div class="text">{"".join(parts)}</div></div>')


def _direction_rows(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{t} / {d}": m for t, ds in summary.get("directions", {}).items() for d, m in ds.items()}


def render_html(records: Sequence[dict[str, Any]], samples: Sequence[Sample], summary: dict[str, Any],
                run_info: dict[str, Any] | None = None, max_items: int | None = 1000) -> str:
    """The report page; items wrong first (stable within each group), at most ``max_items``."""
    run_info = run_info or {}
    order = sorted(range(len(records)), key=lambda i: not is_wrong(records[i]))  # stable: wrong first
    shown = order if max_items is None else order[:max_items]
    n_wrong = sum(is_wrong(r) for r in records)
    meta = []
    for key in ("command", "model", "data", "mode", "created"):
        if run_info.get(key) is not None:
            value = run_info[key]
            if isinstance(value, dict):
                value = ", ".join(f"{k}={v}" for k, v in value.items() if v is not None and not isinstance(v, dict))
            meta.append(f"<div><b>{key}:</b> <code>{_e(value)}</code></div>")
    mc, o2 = summary.get("overall_mc", {}), summary.get("overall_2image_mc", {})
    headline = []
    if o2.get("n"):
        headline.append(f"two-image multiple choice: accuracy <b>{o2['accuracy']:.3f}</b> "
                        f"(chance {o2['chance']:.3f}, n={o2['n']})")
    if mc.get("n") and mc.get("n") != o2.get("n"):
        headline.append(f"all multiple choice: accuracy <b>{mc['accuracy']:.3f}</b> "
                        f"(chance {mc['chance']:.3f}, n={mc['n']})")
    if summary.get("open"):
        op = summary["open"]
        headline.append(f"free-form: exact match <b>{op['exact_match']:.3f}</b>, token F1 {op['f1']:.3f} (n={op['n']})")
    note = (f"showing {len(shown)} of {len(records)} items" if len(shown) < len(records)
            else f"{len(records)} items")
    body = "".join(_item_html(records[i], samples[i]) for i in shown)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>llava_compare eval report</title><style>{CSS}</style></head><body>"
        "<h1>llava_compare evaluation report</h1>"
        f"<div class=\"meta\">{''.join(meta)}</div>"
        f"<p>{'<br>'.join(headline)}</p>"
        f"{_summary_table('task', summary.get('tasks', {}))}"
        f"{_summary_table('QA type', summary.get('qa_types', {}))}"
        f"{''.join(_summary_table(axis, rows) for axis, rows in summary.get('groups', {}).items())}"
        f"{_summary_table('task / direction', _direction_rows(summary))}"
        f"{_swap_table(summary.get('swap'))}"
        f"<h2>Items: {n_wrong} wrong first, then {len(records) - n_wrong} right ({note})</h2>"
        f"{body}</body></html>\n"
    )


# --------------------------------------------------------------------------------------------------
# wandb
# --------------------------------------------------------------------------------------------------


def wandb_wanted(flag: bool, project: str | None = None) -> bool:
    """``--wandb``, or WANDB_MODE set (and not disabled) together with a project."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    return flag or (mode not in ("", "disabled") and bool(project or os.environ.get("WANDB_PROJECT")))


def log_wandb(records: Sequence[dict[str, Any]], samples: Sequence[Sample], summary: dict[str, Any],
              run_info: dict[str, Any], project: str | None = None, name: str | None = None) -> str | None:
    """One wandb run (job_type=eval): the metrics in its summary and a ``predictions`` table with
    the item's images side by side. Returns the run's local folder."""
    import wandb

    run = wandb.init(project=project or os.environ.get("WANDB_PROJECT") or "llava_compare", job_type="eval",
                     name=name, config=json.loads(json.dumps(run_info, default=str)))
    try:
        columns = ["id", "task", "qa_type", "images", "question", "options", "answer", "prediction",
                   "correct", "score", "direction", "swap_consistent", "swap_predictions"]
        table = wandb.Table(columns=columns)
        for rec, s in zip(records, samples):
            score = rec.get("margin") if is_mc(rec) else rec.get("f1")
            table.add_data(rec["id"], rec["task"], rec.get("qa_type"),
                           wandb.Image(side_by_side(s.images)) if s.images else None,
                           rec.get("question"), " | ".join(rec.get("options", [])), rec.get("answer"),
                           rec.get("prediction") if rec.get("prediction") is not None else rec.get("generated"),
                           not is_wrong(rec), score, rec.get("direction"), *_swap_cells(rec))
        flat = {"eval/overall_2image_mc_accuracy": summary["overall_2image_mc"]["accuracy"]}
        if summary.get("overall_mc", {}).get("n"):
            flat["eval/overall_mc_accuracy"] = summary["overall_mc"]["accuracy"]
        for task, m in summary["tasks"].items():
            flat[f"eval/{task}/" + ("accuracy" if "accuracy" in m else "exact_match")] = m.get("accuracy", m.get("exact_match"))
        flat.update(_swap_scalars(summary.get("swap")))
        run.log({"eval/predictions": table, **flat})
        run.summary.update(flat)
        return run.dir
    finally:
        run.finish()


def _swap_cells(rec: dict[str, Any]) -> tuple[bool | None, str | None]:
    """(same image picked in every order, "order: option" per other order) of an item; Nones
    when it was not scored in other orders."""
    if "swaps" not in rec:
        return None, None
    cells = [f"{''.join(str(i + 1) for i in sw['order'])}: "
             f"{'-' if sw['pred_index'] is None else rec['options'][sw['pred_index']]}" for sw in rec["swaps"]]
    return consistent(rec), " | ".join(cells)


def _swap_scalars(swap: dict[str, Any] | None) -> dict[str, float]:
    """The swap metrics as wandb summary scalars (overall and per task)."""
    if not swap:
        return {}
    out: dict[str, float] = {}
    for prefix, m in [("eval/swap", swap["overall"]), *((f"eval/{t}/swap", m) for t, m in swap["tasks"].items())]:
        for key in ("accuracy_all_orders", "consistency", "max_position_excess"):
            if m.get(key) is not None:
                out[f"{prefix}_{key}"] = m[key]
    return out
