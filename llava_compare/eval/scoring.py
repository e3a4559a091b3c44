"""Scoring: batched option log-likelihood, batched greedy generation, parsing a generated choice.

Option log-likelihood (the default, deterministic): for every option the sum of
log p(option tokens + end-of-turn | prompt, images). All options of ``batch_size`` items go through
one forward pass; each item's images go through the ViT once, and its option rows reuse them. Rows are padded to a common width either on
the right (answer positions are unchanged) or on the left (position ids then come from the
attention mask, so every real token keeps the position it has unpadded): both give the unbatched
scores up to float noise. Only the answer positions reach the LM head (the model's ``labels`` path).

Generate-then-parse (the papers' way): greedy answer, then the option is read from it. Lettered
prompts are parsed the way lmms-eval's qbench2 task does it, MMMU's ``parse_multi_choice_response``:
``(A)``, then ``A `` (a letter and a space), then ``A.``, then -- for answers longer than five words --
the option text; several hits: the last one in the answer. Where MMMU then picks a random letter,
we count the answer as wrong and as unparsed (``parsed: false``), so the two can be compared. Other
prompts: the option text (exact, or the one option the answer names).

Items without a gold answer (a withheld test split) get a prediction and no ``correct`` /
``exact_match`` (``labelled: false``).
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..data.conversation import IGNORE, ConversationBuilder
from ..data.padding import pad_rows
from ..data.processor import LlavaCompareProcessor
from ..data.sample import DataError, Sample
from ..model.modeling import merge_image_features
from .formats import LETTERS, is_labelled, prepare_llava_item
from .metrics import normalize, token_f1

MODES = ("loglik", "generate")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _dtype(model: nn.Module) -> torch.dtype:
    """The dtype pixels go in as (the model's floating dtype: bf16 on GPU inference)."""
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def _pad_id(processor: LlavaCompareProcessor) -> int:
    tok = processor.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def image_features(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """``[N_img, T, D_llm]`` image tokens of a llava_compare model or a transformers LLaVA export
    (whose ``get_image_features`` returns them as ``pooler_output``, a list of ``[T, D]``)."""
    out = model.get_image_features(pixel_values=pixel_values)
    if torch.is_tensor(out):
        return out
    feats = out.pooler_output
    return feats if torch.is_tensor(feats) else torch.stack(list(feats))


def embed_with_images(model: nn.Module, input_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Token embeddings ``[B, S, D]`` with ``features`` (``[N_img, T, D]``, reading order) scattered
    into the image placeholder positions by the model package's one merge, with its count check."""
    if hasattr(model, "embed_inputs"):  # ours: its own method, so a sharded model gathers for it
        return model.embed_inputs(input_ids, features)
    embeds = model.get_input_embeddings()(input_ids)
    return merge_image_features(input_ids, embeds, features, model.config.image_token_id)


@torch.no_grad()
def batch_option_logliks(model: nn.Module, processor: LlavaCompareProcessor, builder: ConversationBuilder,
                         items: Sequence[tuple[Sample, Sequence[str]]], padding_side: str = "right"
                         ) -> list[list[float]]:
    """Per item, the log-likelihood of each option given the item's prompt and images, with all
    options of all ``items`` in one forward pass. The ViT and compressor run once over the items'
    images; each option row reuses its item's image tokens."""
    rows: list[list[int]] = []
    labels: list[list[int]] = []
    pixels: list[torch.Tensor] = []
    answer_lens: list[int] = []
    option_rows: list[int] = []  # per item with images: how many option rows reuse its image tokens
    for sample, options in items:
        enc = processor(conversation=sample, builder=builder, images=sample.images, add_generation_prompt=True,
                        return_tensors=None)
        prompt, px = enc["input_ids"][0], enc.get("pixel_values")
        for option in options:
            ans = builder.encode_answer(option)
            rows.append(prompt + ans)
            labels.append([IGNORE] * len(prompt) + ans)
            answer_lens.append(len(ans))
        if px is not None:
            pixels.append(torch.as_tensor(px))
            option_rows.append(len(options))
    if not rows:
        return [[] for _ in items]
    batch = pad_rows(rows, _pad_id(processor), padding_side, labels)
    dev = _device(model)
    inputs = {k: v.to(dev) for k, v in batch.items() if v is not None}
    input_ids = inputs.pop("input_ids")
    if pixels:
        feats = image_features(model, torch.cat(pixels).to(dev, _dtype(model)))  # [N_img, T, D]
        per_item = torch.split(feats, [p.shape[0] for p in pixels])
        # item k's image tokens once per option row of item k, in row order
        feats = torch.cat([f for f, n in zip(per_item, option_rows) for _ in range(n)])
        inputs["inputs_embeds"] = embed_with_images(model, input_ids, feats)
    elif hasattr(model, "embed_inputs"):
        inputs["inputs_embeds"] = model.embed_inputs(input_ids)
    else:
        inputs["inputs_embeds"] = model.get_input_embeddings()(input_ids)
    out = model(**inputs)
    shift = inputs["labels"][:, 1:]
    target = shift[shift != IGNORE]
    logits = out.logits
    if logits.dim() == 3:  # a model that returns logits everywhere: keep the answer positions
        logits = logits[:, :-1][shift != IGNORE]
    tok_logp = logits.float().log_softmax(-1).gather(-1, target[:, None])[:, 0]
    per_row = [float(x.sum()) for x in torch.split(tok_logp.cpu(), answer_lens)]
    scores, start = [], 0
    for sample, options in items:
        scores.append(per_row[start:start + len(options)])
        start += len(options)
    return scores


@torch.no_grad()
def batch_generate(model: nn.Module, processor: LlavaCompareProcessor, builder: ConversationBuilder,
                   samples: Sequence[Sample], max_new_tokens: int = 32) -> list[str]:
    """Greedy answers to each sample's last user turn, left-padded into one ``generate()`` call."""
    if not samples:
        return []
    encoded = [processor(conversation=s, builder=builder, images=s.images, add_generation_prompt=True,
                         return_tensors=None) for s in samples]
    batch = pad_rows([enc["input_ids"][0] for enc in encoded], _pad_id(processor), "left")
    pix = [enc["pixel_values"] for enc in encoded if "pixel_values" in enc]
    dev = _device(model)
    ids, mask = batch["input_ids"].to(dev), batch["attention_mask"].to(dev)
    out = model.generate(input_ids=ids, attention_mask=mask,
                         pixel_values=torch.cat(pix).to(dev, _dtype(model)) if pix else None,
                         max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=_pad_id(processor),
                         eos_token_id=builder.stop_token_ids(model.generation_config.eos_token_id))
    texts = processor.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    return [t.strip() for t in texts]


# --------------------------------------------------------------------------------------------------
# Parsing a generated answer
# --------------------------------------------------------------------------------------------------

def _option_in_text(text: str, options: Sequence[str]) -> int | None:
    t = normalize(text)
    opts = [normalize(o) for o in options]
    exact = [i for i, o in enumerate(opts) if o and o == t]
    if len(exact) == 1:
        return exact[0]
    named = [i for i, o in enumerate(opts) if o and re.search(rf"(?<!\w){re.escape(o)}(?!\w)", t)]
    # "dark red" names "red" too: keep only options that are not part of another named option
    named = [i for i in named if not any(j != i and opts[i] in opts[j] for j in named)]
    return named[0] if len(set(opts[i] for i in named)) == 1 else None


def parse_mmmu(text: str, options: Sequence[str]) -> int | None:
    """MMMU's ``parse_multi_choice_response`` (lmms-eval's qbench2 parser) minus its random fallback:
    the index of the option a generated answer picks, or None."""
    response = text
    for char in (",", ".", "!", "?", ";", ":", "'"):
        response = response.strip(char)
    response = f" {response} "  # spaces so that "A" at either end still reads as "A "
    letters = LETTERS[:len(options)]
    found = [c for c in letters if f"({c})" in response]
    how = "bracket"
    if not found:
        found, how = [c for c in letters if f"{c} " in response], "letter"
    if not found:
        found = [c for c in letters if f"{c}." in response]
    if not found and len(response.split()) > 5:
        found, how = [c for c, o in zip(letters, options) if o.lower() in response.lower()], "text"
    if not found:
        return None
    if len(found) > 1:  # the one named last wins
        where = {"bracket": lambda c: response.rfind(f"({c})"), "letter": lambda c: response.rfind(f" {c} "),
                 "text": lambda c: response.lower().rfind(options[LETTERS.index(c)].lower())}[how]
        positions = [where(c) for c in found]
        found = [found[positions.index(max(positions))]]
    return LETTERS.index(found[0])


def parse_choice(text: str, options: Sequence[str], lettered: bool) -> int | None:
    """The option a generated answer picks, or None (unparseable): MMMU-style for lettered
    prompts, by option text otherwise."""
    if not text.strip():
        return None
    return parse_mmmu(text, options) if lettered else _option_in_text(text.strip(), options)


# --------------------------------------------------------------------------------------------------
# Items -> prediction records
# --------------------------------------------------------------------------------------------------


def ensure_prepared(sample: Sample) -> Sample:
    """Samples straight from the training readers get their eval fields (``mcq`` semantics)."""
    return sample if "kind" in sample.meta else prepare_llava_item(sample)


def prepare_all(samples: Sequence[Sample]) -> tuple[list[Sample], dict[str, int]]:
    kept, skipped = [], {}
    for s in samples:
        try:
            kept.append(ensure_prepared(s))
        except DataError as err:
            skipped[err.kind] = skipped.get(err.kind, 0) + 1
    return kept, skipped


def _base_record(s: Sample, mode: str) -> dict[str, Any]:
    m = s.meta
    rec: dict[str, Any] = {"id": s.id, "task": m.get("task", "unknown"), "num_images": len(s.images),
                           "question": m.get("question", ""), "answer": m.get("answer")}
    if m.get("qa_type") is not None:
        rec["qa_type"] = m["qa_type"]
    if m.get("direction") is not None:  # which way the question asks ("brighter" | "darker", ...)
        rec["direction"] = str(m["direction"])
    if m.get("groups"):
        rec["groups"] = dict(m["groups"])
    rec["labelled"] = is_labelled(s)
    if m["kind"] == "mc":
        rec.update(options=m["options"], gold_index=m["gold_index"], chance=1 / len(m["options"]))
        if m.get("lettered"):
            rec["lettered"] = True
    rec["mode"] = mode if m["kind"] == "mc" else "generate"
    return rec


def _mc_record(s: Sample, rec: dict[str, Any], pred: int | None) -> dict[str, Any]:
    rec.update(pred_index=pred, prediction=None if pred is None else s.meta["options"][pred])
    if s.meta.get("lettered"):
        rec["pred_letter"] = None if pred is None else LETTERS[pred]
    if rec["labelled"]:
        rec["correct"] = pred == s.meta["gold_index"]
    return rec


def loglik_record(s: Sample, scores: Sequence[float]) -> dict[str, Any]:
    rec = _base_record(s, "loglik")
    best = max(range(len(scores)), key=scores.__getitem__)
    ranked = sorted(scores, reverse=True)
    rec.update(scores=list(scores), margin=ranked[0] - ranked[1] if len(ranked) > 1 else None)
    return _mc_record(s, rec, best)


def generated_record(s: Sample, text: str, mode: str) -> dict[str, Any]:
    rec = _base_record(s, mode)
    if s.meta["kind"] == "open":
        rec["prediction"] = text
        if rec["labelled"]:
            gold = s.meta["answer"]
            rec.update(exact_match=normalize(text) == normalize(gold), f1=token_f1(text, gold))
        return rec
    pred = parse_choice(text, s.meta["options"], bool(s.meta.get("lettered")))
    rec.update(generated=text, parsed=pred is not None)
    return _mc_record(s, rec, pred)


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def score_items(model: nn.Module, processor: LlavaCompareProcessor, builder: ConversationBuilder,
                samples: Sequence[Sample], mode: str = "loglik", batch_size: int = 8,
                max_new_tokens: int = 32, padding_side: str = "right", progress: bool = True
                ) -> list[dict[str, Any]]:
    """One record per (prepared) sample, in order. ``batch_size`` items share a forward pass."""
    from tqdm.auto import tqdm

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(samples), desc=f"eval ({mode})", unit="item", disable=not progress)
    for batch in _batches(list(samples), batch_size):
        out: dict[int, dict[str, Any]] = {}
        by_ll = [i for i, s in enumerate(batch) if s.meta["kind"] == "mc" and mode == "loglik"]
        by_gen = [i for i in range(len(batch)) if i not in by_ll]
        if by_ll:
            scores = batch_option_logliks(model, processor, builder,
                                          [(batch[i], batch[i].meta["choices"]) for i in by_ll], padding_side)
            out.update({i: loglik_record(batch[i], sc) for i, sc in zip(by_ll, scores)})
        if by_gen:
            texts = batch_generate(model, processor, builder, [batch[i] for i in by_gen], max_new_tokens)
            out.update({i: generated_record(batch[i], t, mode) for i, t in zip(by_gen, texts)})
        records += [out[i] for i in range(len(batch))]
        bar.update(len(batch))
    bar.close()
    return records
