"""``llava-compare inspect [DATA ...] [-n 3] [--ids ID ...] [-- recipe=NAME key=value ...]``: see what the model sees.

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

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from .data.conversation import IGNORE
from .data.dataset import CompareDataset, _trailing_trims
from .data.formats import FORMATS, SourceSpec, read_sources
from .data.processor import LlavaCompareProcessor
from .data.sample import DataError, Sample
from .overrides import refuse_misplaced

log = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------------------------------
# From a config: the dataset training would build (no weights loaded)
# --------------------------------------------------------------------------------------------------


def config_processor(cfg: DictConfig) -> LlavaCompareProcessor:
    """The processor a run of ``cfg`` trains with: ``init_from``'s, else one built from
    ``cfg.model`` (tokenizer and configs only, never weights). A missing ``init_from`` is a
    ``FileNotFoundError`` naming the path, not a hub-id validation traceback."""
    from .model.build import build_processor

    if not cfg.init_from:
        return build_processor(OmegaConf.to_container(cfg.model))
    ref = str(cfg.init_from)
    path = Path(ref).expanduser()
    hub_like = ref.count("/") == 1 and not ref.startswith((".", "/", "~"))
    if not path.exists() and not hub_like:
        raise FileNotFoundError(f"init_from {ref!r} does not exist (relative paths are read from {Path.cwd()}); "
                                "train that stage first, run from the folder it is relative to, or pass "
                                "init_from=/path/to/stage_output")
    try:
        return LlavaCompareProcessor.from_pretrained(str(path) if path.exists() else ref)
    except (OSError, ValueError) as err:  # HFValidationError is a ValueError; offline / 404 an OSError
        raise FileNotFoundError(f"init_from {ref!r} is neither a stage output folder nor a loadable hub id "
                                f"({type(err).__name__}: {str(err).splitlines()[0]})") from None


def config_dataset(cfg: DictConfig, samples: Sequence[Sample] = ()) -> CompareDataset:
    """A training dataset of ``cfg`` over ``samples``: same builder, processor and token budget."""
    from .data.pipeline import make_builder

    processor = config_processor(cfg)
    return CompareDataset(list(samples), processor, make_builder(cfg, processor), cfg.data.max_length,
                          max_image_pixels=cfg.data.max_image_pixels)


def log_example(dataset: CompareDataset, logger: logging.Logger = log, tries: int = 20) -> None:
    """Log the first sample training can use, as ``inspect`` prints it (training calls this on
    rank 0 at start, so a template or marker mistake shows before the first step)."""
    for sample in dataset.samples[:tries]:
        view = inspect_sample(sample, dataset)
        if view.skipped is None:
            logger.info("the first training sample, as the model sees it:\n%s", format_view(view))
            return
    logger.warning("none of the first %d training samples can be used; see `llava-compare validate`", tries)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def add_cli(sub: argparse._SubParsersAction, compose: Callable[[list[str]], DictConfig]) -> None:
    """``compose``: overrides -> validated config (``train.config.compose_config``; passed in by
    ``cli`` because the training config sits above this module's layer)."""
    p = sub.add_parser("inspect", help="print samples exactly as training encodes them",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", metavar="DATA",
                   help="data files/folders (default: the recipe's data.train)")
    p.add_argument("-n", type=int, default=3, help="how many samples, from the start (default 3)")
    p.add_argument("--ids", nargs="+", default=None, metavar="ID",
                   help="show these sample ids instead")
    p.add_argument("--format", default="auto", choices=FORMATS, help="row layout (default: detected)")
    p.add_argument("--image-root", default=None, help="folder relative image paths are joined to")
    p.set_defaults(handler=run_cli, compose=compose)


def _select(samples: Sequence[Sample], n: int, ids: Sequence[str] | None) -> list[Sample]:
    if not ids:
        return list(samples[:n])
    by_id = {s.id: s for s in samples}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise KeyError(f"no sample with id {', '.join(map(repr, missing))} (first ids: "
                       f"{', '.join(s.id for s in samples[:5])})")
    return [by_id[i] for i in ids]


def run_cli(args: argparse.Namespace) -> int:
    paths = args.paths
    try:
        refuse_misplaced(paths, "inspect")
        cfg = args.compose(args.overrides)
        specs = ([SourceSpec(path=p, format=args.format, image_root=args.image_root) for p in paths] if paths
                 else [SourceSpec(**OmegaConf.to_container(s)) for s in cfg.data.train])
        if not specs:
            raise ValueError("give a data file (llava-compare inspect DATA ...) or a recipe with data.train")
        samples = read_sources(specs, on_error="skip")
        chosen = _select(samples, args.n, args.ids)
        dataset = config_dataset(cfg, chosen)
    except (FileNotFoundError, KeyError, ValueError) as err:  # ValueError includes ConfigError
        print(f"inspect: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2
    b = dataset.builder
    print(f"{len(samples)} samples in {', '.join(s.path for s in specs)}"
          + (f" ({samples.num_skipped} rows the reader skipped: {dict(samples.skipped)})" if samples.skipped else ""))
    print(f"template: {b.template}; markers: {b.marker_template!r}; max_length {dataset.max_length}; "
          f"{dataset.processor.tokens_per_image} tokens per image\n")
    for sample in chosen:
        print(format_view(inspect_sample(sample, dataset)) + "\n")
    return 0
