"""End-of-training evaluation as a user reads it (``eval.mode=generate``; the demo's report).

- accuracy per task next to chance, from *generated* answers parsed exactly as
  ``llava-compare eval --mode generate`` parses them; free-text tasks by exact match and token F1;
- option log-likelihood on the same multiple-choice items, and how often the two agree;
- with ``eval.swap_orders`` N > 0: every item whose options name its images also answered with its
  images in N other orders (``eval/swaps.py``): accuracy over all orders, swap consistency and the
  position pick rates against the gold position rates, per task, direction and image count;
- a few example answers (question, generated answer, gold; the answer in another image order),
  one per task and direction;
- text-only chat prompts answered before and after training (is the LLM still a chat model?).

Writes ``results.json``, ``predictions.jsonl`` (generated) and ``report.html`` to ``<run>/eval``
like the eval command, plus ``demo_report.json`` with the agreement, examples and chat answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from ..data.conversation import ConversationBuilder
from ..data.sample import Message, Sample
from ..eval.metrics import format_summary, is_mc, summarize
from ..eval.scoring import batch_generate, prepare_all
from ..eval.sharded import score_on_all_ranks
from ..eval.swaps import score_in_orders, swap_summary
from ..ranks import rank


def prompt_sample(prompt: str, sample_id: str = "chat") -> Sample:
    """A one-turn text-only sample to generate from (the assistant turn is a stand-in)."""
    return Sample(sample_id, [Message("user", prompt), Message("assistant", "...")])


def chat(model: Any, processor: Any, builder: ConversationBuilder, prompts: Sequence[str],
         max_new_tokens: int = 48, batch_size: int = 16) -> list[tuple[str, bool]]:
    """Greedy answers to text-only prompts: ``(text, finished)`` with ``finished`` False when the
    answer was cut at ``max_new_tokens``."""
    was_training = model.training
    model.eval()
    out: list[tuple[str, bool]] = []
    try:
        for i in range(0, len(prompts), batch_size):
            batch = [prompt_sample(p, f"chat-{i + j}") for j, p in enumerate(prompts[i:i + batch_size])]
            long = batch_generate(model, processor, builder, batch, max_new_tokens + 1)
            for text in long:
                n = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
                out.append((text, n <= max_new_tokens))
    finally:
        model.train(was_training)
    return out


def agreement(generated: Sequence[dict[str, Any]], loglik: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Log-likelihood accuracy and the share of MC items where both modes pick the same option
    (an unparsed generated answer counts as a disagreement)."""
    pairs = [(g, ll) for g, ll in zip(generated, loglik) if is_mc(g)]
    n = len(pairs)
    same = sum(g.get("pred_index") is not None and g["pred_index"] == ll["pred_index"] for g, ll in pairs)
    return {"n": n, "agreement": same / max(n, 1),
            "loglik_accuracy": sum(bool(ll["correct"]) for _, ll in pairs) / max(n, 1),
            "unparsed": sum(not g.get("parsed", True) for g, _ in pairs)}


def examples(records: Sequence[dict[str, Any]], k: int = 3) -> list[dict[str, Any]]:
    """Up to ``k`` records from distinct (task, direction) pairs (first item of each), for printing;
    an item scored in other image orders also shows its first other order and the answer there."""
    seen, out = set(), []
    for r in records:
        key = (r["task"], r.get("direction"))
        if key not in seen and len(out) < k:
            seen.add(key)
            shown = {"task": r["task"], "question": r["question"],
                     "answer": r.get("generated", r.get("prediction")), "gold": r.get("answer")}
            if r.get("direction") is not None:
                shown["direction"] = r["direction"]
            if r.get("swaps"):
                first = r["swaps"][0]
                shown["swapped"] = {"order": first["order"], "gold": r["options"][first["gold_index"]],
                                    "answer": first.get("generated", None if first["pred_index"] is None
                                                        else r["options"][first["pred_index"]])}
            out.append(shown)
    return out


def _example_lines(e: dict[str, Any]) -> list[str]:
    name = e["task"] + (f" {e['direction']}" if e.get("direction") else "")
    lines = [f"  [{name}] Q: {e['question']}", f"      A: {e['answer']!r}   (gold: {e['gold']!r})"]
    if e.get("swapped"):
        sw = e["swapped"]
        order = ", ".join(f"image {i + 1}" for i in sw["order"])
        lines.append(f"      shown as ({order}): A: {sw['answer']!r}   (gold: {sw['gold']!r})")
    return lines


def format_report(summary: dict[str, Any], agree: dict[str, Any], shown: Sequence[dict[str, Any]],
                  chats: Sequence[dict[str, str]]) -> str:
    lines = ["held-out accuracy from generated answers (parsed like `llava-compare eval --mode generate`):",
             format_summary(summary),
             f"option log-likelihood on the same {agree['n']} multiple-choice items: accuracy "
             f"{agree['loglik_accuracy']:.3f}; agrees with the generated answer on {agree['agreement']:.3f} "
             f"({agree['unparsed']} generated answers unparsed)", "", "example answers:"]
    for e in shown:
        lines += _example_lines(e)
    for c in chats:
        lines += ["", f"text-only chat check: {c['prompt']}", f"  before stage 2: {c['before']!r}",
                  f"  after stage 2:  {c['after']!r}"]
    return "\n".join(lines)


def user_report(model: nn.Module, processor: Any, builder: ConversationBuilder, samples: Sequence[Sample],
                out_dir: str | Path, *, batch_size: int = 16, max_new_tokens: int = 16,
                n_examples: int = 3, chats: Sequence[dict[str, str]] = (), run_info: dict[str, Any] | None = None,
                swap_orders: int = 0) -> dict[str, Any]:
    """Score ``samples`` both ways, write the outputs, print the report; returns the summary with
    ``agreement``, ``examples`` and ``chat`` added (and ``swap`` with ``swap_orders`` > 0: the
    generated answers in other image orders)."""
    from ..eval.report import write_outputs

    kept, skipped = prepare_all(samples)
    was_training = model.training
    model.eval()
    try:  # every rank scores a share (ZeRO-3 / FSDP forwards need all of them); each gets all records
        gen, excluded = score_in_orders(
            lambda items: score_on_all_ranks(model, processor, builder, items, "generate", batch_size,
                                             max_new_tokens, progress=False), kept, swap_orders)
        mc = [s for s in kept if s.meta["kind"] == "mc"]
        ll_by_id = {r["id"]: r for r in score_on_all_ranks(model, processor, builder, mc, "loglik", batch_size,
                                                           progress=False)}
    finally:
        model.train(was_training)
    summary = summarize(gen)
    if skipped:
        summary["skipped"] = skipped
    if swap_orders > 0:
        summary["swap"] = swap_summary(gen, swap_orders, excluded)
    agree = agreement([g for g in gen if g["id"] in ll_by_id], [ll_by_id[g["id"]] for g in gen if g["id"] in ll_by_id])
    shown = examples(gen, n_examples)
    extra = {"agreement": agree, "examples": shown, "chat": list(chats)}
    if rank() != 0:  # rank 0 writes and prints
        return {**summary, **extra}
    write_outputs(out_dir, gen, kept, summary, {**(run_info or {}), "mode": "generate",
                                                 "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                                                 "swap_orders": swap_orders})
    (Path(out_dir) / "demo_report.json").write_text(json.dumps(extra, indent=2))
    print(format_report(summary, agree, shown, chats), flush=True)
    return {**summary, **extra}


def user_report_run(cfg: Any, model: nn.Module, processor: Any, builder: ConversationBuilder,
                    chats_before: Sequence[str]) -> dict[str, Any]:
    """The report at the end of a training run (``eval.mode=generate``), on ``cfg.data.eval``.
    Under ``torchrun`` every rank calls it (chat prompts too: the same prompts on every rank keep
    sharded forwards in step); rank 0 writes and prints."""
    from omegaconf import OmegaConf

    from ..data.formats import SourceSpec, read_sources

    specs = [SourceSpec(**OmegaConf.to_container(s)) for s in cfg.data.eval]
    samples = read_sources(specs, on_error="skip")
    prompts = list(cfg.eval.chat_prompts or [])
    after = [a for a, _ in chat(model, processor, builder, prompts, cfg.eval.chat_max_new_tokens)] if prompts else []
    chats = [{"prompt": p, "before": b, "after": a} for p, b, a in zip(prompts, chats_before, after)]
    info = {"model": {"path": str(Path(cfg.output_dir).resolve()), "source": "end of training"},
            "data": {"paths": [s.path for s in specs], "format": "mcq", "skipped": dict(samples.skipped)}}
    return user_report(model, processor, builder, samples, Path(cfg.output_dir) / "eval",
                       batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens,
                       n_examples=cfg.eval.examples, chats=chats, run_info=info,
                       swap_orders=int(OmegaConf.select(cfg, "eval.swap_orders", default=0)))
