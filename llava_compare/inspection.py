"""``llava-compare inspect DATA [recipe=NAME key=value ...] [-n 3] [--ids ID ...]``: see what the model sees.

Prints samples exactly as training encodes them -- the same readers, conversation builder,
processor and token budget (``CompareDataset.fit_budget``) -- decoded back to text:

* each image span collapsed to ``<image×T>`` (T = the compressor's tokens per image);
* the image markers as they end up in the text, and where they come from (the data's own, kept;
  or the builder's ``data.marker_template``);
* the tokens that carry labels (the loss is computed on them) wrapped in ``«…»`` and listed apart;
* the token count against ``data.max_length`` and what the budget trimmed (trailing exchanges), or
  why the sample is skipped.

Training logs one such printout (the first sample) on rank 0 at start, so a template mistake shows
before the first step -- the check LLaMA-Factory users rely on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from .data.conversation import IGNORE
from .data.dataset import CompareDataset, _trailing_trims
from .data.sample import DataError, Sample

LABEL_OPEN, LABEL_CLOSE = "«", "»"


@dataclass
class SampleView:
    """One sample as training encodes it."""

    sample_id: str
    n_images: int
    tokens_per_image: int
    markers: str  # "from the data (kept)" | "added by the builder: 'Image {k}: '" | "none"
    text: str = ""  # decoded, images collapsed, labelled spans wrapped in «…»
    labelled: list[str] = field(default_factory=list)  # each labelled span, decoded
    n_tokens: int = 0
    n_labelled: int = 0
    max_length: int = 0
    full_tokens: int = 0  # before the budget trimmed anything
    turns_dropped: int = 0  # trailing messages the budget removed
    skipped: str | None = None  # "kind: detail" when training would skip the sample


def _spans(ids: Sequence[int], labels: Sequence[int], image_id: int) -> list[tuple[str, list[int]]]:
    """Runs of ("image" | "label" | "text", ids)."""
    runs: list[tuple[str, list[int]]] = []
    for tok, lab in zip(ids, labels):
        kind = "image" if tok == image_id else "label" if lab != IGNORE else "text"
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(tok)
        else:
            runs.append((kind, [tok]))
    return runs


def render(ids: Sequence[int], labels: Sequence[int], dataset: CompareDataset) -> tuple[str, list[str]]:
    """(decoded text with ``<image×T>`` and ``«labelled»`` spans, the labelled spans alone)."""
    proc = dataset.processor
    t = proc.tokens_per_image
    parts, labelled = [], []
    for kind, run in _spans(ids, labels, proc.image_token_id):
        if kind == "image":  # adjacent images make one run: one <image×T> per image
            parts.append(f"<image×{t}>" * (len(run) // t) + (f"<image×{len(run) % t}?>" if len(run) % t else ""))
            continue
        text = proc.tokenizer.decode(run, skip_special_tokens=False)
        if kind == "label":
            labelled.append(text)
            text = f"{LABEL_OPEN}{text}{LABEL_CLOSE}"
        parts.append(text)
    return "".join(parts), labelled


def _markers(sample: Sample, dataset: CompareDataset) -> str:
    if not sample.images:
        return "none (no images)"
    if sample.has_markers:
        return "from the data (kept; the builder adds none)"
    template = dataset.builder.marker_template
    return f"added by the builder: {template!r}" if template else "none (data.image_marker=none)"


def inspect_sample(sample: Sample, dataset: CompareDataset) -> SampleView:
    """What training makes of ``sample`` (never raises for a bad sample: ``skipped`` says why)."""
    view = SampleView(sample.id, len(sample.images), dataset.processor.tokens_per_image,
                      _markers(sample, dataset), max_length=dataset.max_length)

    def length(candidate: Sample) -> int:
        return len(dataset.processor.expand_image_tokens(dataset.builder.encode(candidate).input_ids)[0])

    try:
        enc = dataset.encode_text(sample)  # exactly what training does, errors included
        candidates = _trailing_trims(sample)  # the budget's own candidates, longest first
        view.full_tokens = length(candidates[0])
        kept = next(c for c in candidates if length(c) <= dataset.max_length)
    except DataError as err:
        view.skipped = f"{err.kind}: {err.detail}"
        return view
    view.turns_dropped = len(sample.messages) - len(kept.messages)
    view.n_tokens, view.n_labelled = len(enc.input_ids), sum(lab != IGNORE for lab in enc.labels)
    view.text, view.labelled = render(enc.input_ids, enc.labels, dataset)
    return view


def format_view(view: SampleView, source: str = "") -> str:
    head = f"=== sample {view.sample_id!r}" + (f" ({source})" if source else "") + " ==="
    lines = [head, f"images: {view.n_images} x {view.tokens_per_image} tokens; markers: {view.markers}"]
    if view.skipped:
        return "\n".join(lines + [f"SKIPPED by training: {view.skipped}"])
    trimmed = (f"the budget dropped the last {view.turns_dropped} turns ({view.full_tokens} tokens in full)"
               if view.turns_dropped else "nothing trimmed")
    lines += [f"tokens: {view.n_tokens} / max_length {view.max_length}; {trimmed}",
              f"labelled tokens: {view.n_labelled} (the loss is computed on the {LABEL_OPEN}…{LABEL_CLOSE} spans)",
              "--- text ---", view.text, "--- labelled spans ---"]
    lines += [f"{i}: {LABEL_OPEN}{span}{LABEL_CLOSE}" for i, span in enumerate(view.labelled, 1)]
    return "\n".join(lines)
