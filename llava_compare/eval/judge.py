"""LLM-as-judge for free-form answers (``llava-compare eval ... --judge MODEL``).

Any local causal LM -- a folder or a hub id that ``AutoModelForCausalLM`` loads -- reads the
question, the reference answer and the model's answer (never the images) and replies with a score
from 0 to 5 (``JUDGE_PROMPT``; wrapped in the judge's chat template when its tokenizer has one).
Greedy decoding, so a judge gives the same scores every run. The first integer 0-5 in the reply is
the score; a reply without one is counted (``judge_unparsed``), not guessed.

CaD-VI's paper scores CaD-QA with its own LLM judge and prompt: numbers from another judge are not
comparable to the paper's.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import torch

JUDGE_PROMPT = (
    "You are grading an answer to a question about two or more images. You cannot see the images: "
    "compare the candidate answer with the reference answer.\n"
    "Question: {question}\n"
    "Reference answer: {answer}\n"
    "Candidate answer: {prediction}\n"
    "How well does the candidate answer agree with the reference answer? Reply with one integer "
    "from 0 (wrong or unrelated) to 5 (the same meaning as the reference).\n"
    "Score:"
)
_SCORE = re.compile(r"(?<!\d)([0-5])(?!\d)")


def judge_prompt(record: dict[str, Any]) -> str:
    return JUDGE_PROMPT.format(question=record.get("question", ""), answer=record.get("answer", ""),
                               prediction=record.get("prediction", ""))


def parse_score(reply: str) -> int | None:
    """The first integer 0-5 in the judge's reply (``"4"``, ``"Score: 3/5"``), else None."""
    m = _SCORE.search(reply)
    return int(m.group(1)) if m else None


def load_judge(ref: str) -> tuple[Any, Any]:
    """(model, tokenizer) of a causal LM folder or hub id; left padding for batched generation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ref)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return AutoModelForCausalLM.from_pretrained(ref).eval(), tokenizer


def _render(tokenizer: Any, prompt: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


@torch.no_grad()
def judge_records(records: Sequence[dict[str, Any]], ref: str, batch_size: int = 8,
                  max_new_tokens: int = 8) -> int:
    """Add ``judge_score`` (int 0-5 or None) and ``judge_reply`` to every scored free-form record;
    returns how many were judged."""
    todo = [r for r in records if "exact_match" in r]  # labelled free-form answers
    if not todo:
        return 0
    model, tokenizer = load_judge(ref)
    device = next(model.parameters()).device
    for i in range(0, len(todo), batch_size):
        batch = todo[i:i + batch_size]
        enc = tokenizer([_render(tokenizer, judge_prompt(r)) for r in batch], return_tensors="pt",
                        padding=True, add_special_tokens=not getattr(tokenizer, "chat_template", None))
        enc = {k: v.to(device) for k, v in enc.items()}
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        replies = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for rec, reply in zip(batch, replies):
            rec.update(judge_reply=reply.strip(), judge_score=parse_score(reply))
    return len(todo)
