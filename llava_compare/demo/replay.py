"""Text-only replay: the base LLM's own answers to general prompts, mixed into stage 2.

LoRA tuned on comparison answers alone ("Image 2") teaches a small LLM that every answer is a
short label: asked "What is the capital of France?", it answers "France".
Real recipes mix general instruction data in. At demo scale we replay the model's *own* greedy
answers (generated once, before any LoRA step, by the LLM being tuned): a cheap self-distillation
that keeps its chat behaviour without any outside data.

The replay file is LLaVA-format JSON (text-only rows), written once next to the synthetic data and
reused while the prompts and the LLM are the same (both hashed into ``<file>.fingerprint``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from ..data.conversation import ConversationBuilder
from ..data.feature_cache import autocast_precision
from ..ranks import rank
from ..train.config import REPO_ROOT
from .user_report import chat

log = logging.getLogger(__name__)


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line; blank lines and ``#`` comments ignored."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"data.replay.prompts: {path} holds no prompts (one per line expected)")
    return prompts


def _fingerprint(model: Any, prompts: Sequence[str], max_new_tokens: int) -> str:
    h = hashlib.sha256(json.dumps([list(prompts), max_new_tokens]).encode())
    precision = autocast_precision()
    if precision:  # bf16 greedy answers differ from fp32 ones
        h.update(precision.encode())
    h.update(str(getattr(model.config.text_config, "_name_or_path", "")).encode())
    w = model.get_input_embeddings().weight
    h.update(w[:64].detach().float().cpu().numpy().tobytes())  # which LLM: a slice of its embeddings
    return h.hexdigest()[:16]


def ensure_replay(model: Any, processor: Any, builder: ConversationBuilder, prompts_path: str | Path,
                  out_path: str | Path, repeat: int = 1, max_new_tokens: int = 64) -> Path:
    """Write (once) the replay file: each finished answer ``repeat`` times. Returns its path."""
    prompts = read_prompts(prompts_path)
    out = Path(out_path)
    stamp = out.with_name(out.name + ".fingerprint")
    key = f"{_fingerprint(model, prompts, max_new_tokens)} repeat={repeat}"
    if out.is_file() and stamp.is_file() and stamp.read_text() == key:
        return out
    log.info("replay: generating the base LLM's answers to %d prompts from %s", len(prompts), prompts_path)
    answers = chat(model, processor, builder, prompts, max_new_tokens)
    rows = [{"id": f"replay-{i}-{r}", "task": "replay",
             "conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": a}]}
            for r in range(repeat) for i, (p, (a, done)) in enumerate(zip(prompts, answers)) if done and a]
    kept = len(rows) // max(repeat, 1)
    log.info("replay: %d of %d answers finished within %d tokens; %d rows", kept, len(prompts), max_new_tokens, len(rows))
    if rank() != 0:  # under ZeRO-3 every rank generates (synced); one writes
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(out)  # atomic: a reader sees the old file or the whole new one
    stamp.write_text(key)  # last: a file without its stamp is rewritten
    return out


def replay_from_config(cfg: Any, model: Any, processor: Any, builder: ConversationBuilder) -> Path | None:
    """``data.replay`` of a training config -> the replay file (written once), or None."""
    r = cfg.data.replay
    if r is None:
        return None
    prompts = Path(r.prompts) if Path(r.prompts).is_file() else REPO_ROOT / r.prompts
    if not prompts.is_file():
        raise FileNotFoundError(f"data.replay.prompts: no prompt file at {r.prompts}")
    return ensure_replay(model, processor, builder, prompts, r.out, r.repeat, r.max_new_tokens)


def chat_before(cfg: Any, model: Any, processor: Any, builder: ConversationBuilder) -> list[str]:
    """Answers to ``eval.chat_prompts`` from the model before this stage trains."""
    prompts = list(cfg.eval.chat_prompts or [])
    return [a for a, _ in chat(model, processor, builder, prompts, cfg.eval.chat_max_new_tokens)] if prompts else []
