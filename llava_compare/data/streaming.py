"""Streaming training data (``data.streaming=true``): sources read as ``datasets.IterableDataset``,
split over ranks and DataLoader workers, interleaved by weight, resumed exactly after a crash.

The path of one row: each source (JSONL or parquet shards, a JSON file, or a hub id) is streamed,
limited (``max_samples``, ``sampling: first:N``), split over ranks with
``datasets.distributed.split_dataset_by_node`` and cycled without end (``repeat(None)``: a run's
length is ``optim.max_steps``); every row becomes one JSON string with its source's index, so
sources of different layouts share one schema; ``interleave_datasets`` mixes them with the
weights as probabilities and the run's seed -- the same draw sequence on every rank. A worker
parses and encodes its rows into samples with the training dataset's own code
(``CompareDataset.item``: token budget, skip-and-count), so packing and skips work as on map-style
data. There is no shuffle buffer: a stream is read in file order (shuffle the shards beforehand),
which keeps its position exact.

Workers and exact resume. ``datasets`` would give each DataLoader worker its own shards, and the
DataLoader takes batches from workers in turn, so a resumed loader (which starts again at worker 0)
would not continue where the killed one stopped. Here every worker reads this rank's whole stream
and keeps only its batches (batch ``b`` of the stream goes to worker ``b % num_workers``): the
DataLoader then yields the stream's batches in order, whatever the number of workers, and a
resumed run continues from the exact position. Rows are cheap to read; the expensive part
(tokenising, decoding images) runs once per row, in its worker. The stream's position is
``steps x accumulation x batch size`` rows; its ``state_dict()`` at that position comes from a
reader in the training process that advances to it at each save (``train/stream_state.py``
writes it into the checkpoint and hands it back at resume).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from .dataset import CompareDataset, SkippedSample
from .formats import DATA_SUFFIXES, SourceSpec, make_context, resolve_data_files
from .mixture import check_weights_given, parse_sampling
from .rows import RowContext, parse_row
from .sample import DataError, Sample

log = logging.getLogger(__name__)
_BYTES = "__bytes__"  # how embedded image bytes travel inside a row's JSON string


def _to_json(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {_BYTES: base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"cannot stream a value of type {type(value).__name__} (embedded images must be bytes)")


def _from_json(obj: dict[str, Any]) -> Any:
    return base64.b64decode(obj[_BYTES]) if set(obj) == {_BYTES} else obj


def check_streamable(specs: Sequence[SourceSpec], max_steps: int) -> None:
    """One-line errors for settings a stream cannot honour (see the schema's ``SourceConfig``)."""
    if max_steps is None or max_steps <= 0:
        raise ValueError("data.streaming needs optim.max_steps > 0: a stream has no length to count epochs by")
    check_weights_given([s.weight for s in specs], [s.path for s in specs])
    if len(specs) > 1 and specs[0].weight is None:
        raise ValueError(f"data.streaming with {len(specs)} sources needs a weight on each (the interleaving "
                         "probabilities): stream row counts are not known up front")
    for spec in specs:
        rule = parse_sampling(spec.sampling, spec.path)
        if rule.how == "random" or (rule.how == "first" and rule.percent):
            raise ValueError(f"{spec.path}: sampling {spec.sampling!r} needs the source's size; under "
                             "data.streaming use all or first:N")
        if spec.repeat != 1:
            raise ValueError(f"{spec.path}: repeat {spec.repeat} under data.streaming: a stream cycles until "
                             "optim.max_steps; set weights instead")


class StreamSource:
    """One source as a stream of ``{"text": row as JSON, "source": index}`` rows, and the context
    its rows are parsed with (format and image root, decided by its first row)."""

    def __init__(self, spec: SourceSpec, index: int):
        self.spec, self.index = spec, index
        files = resolve_data_files(spec.path)
        self.files = files
        first = next(iter(self._raw().take(1)), None)
        if first is None:
            raise ValueError(f"{spec.path}: the stream holds no rows")
        row = json.loads(first["text"]) if self._lines else first
        label = spec.path if files is None else str(files[0])
        self.ctx: RowContext = make_context(spec, row, label, None if files is None else str(files[0].parent))
        self._columns = None if self._lines else list(first)

    @property
    def _lines(self) -> bool:
        """JSONL shards are read as text lines: each line is the row's JSON already."""
        return self.files is not None and all(f.suffix.lower() == ".jsonl" for f in self.files)

    def _raw(self) -> Any:
        import datasets

        if self.files is None:
            return datasets.load_dataset(self.spec.path, split=self.spec.split, streaming=True).decode(False)
        builders = {DATA_SUFFIXES[f.suffix.lower()] for f in self.files}
        if len(builders) > 1:
            raise ValueError(f"{self.spec.path}: streaming needs one file type per source, found {sorted(builders)}")
        data_files = [str(f) for f in self.files]
        if self._lines:
            ds = datasets.load_dataset("text", data_files=data_files, split="train", streaming=True)
            return ds.filter(_not_blank)
        return datasets.load_dataset(builders.pop(), data_files=data_files, split="train", streaming=True).decode(False)

    def stream(self, rank: int, world: int) -> Any:
        """This rank's share of the source, cycled without end, as ``{"text", "source"}`` rows."""
        import datasets
        from datasets.distributed import split_dataset_by_node

        ds = self._raw()
        limits = [n for n in (self.spec.max_samples, _first_n(self.spec)) if n is not None]
        if limits:
            ds = ds.take(min(limits))
        features = datasets.Features({"text": datasets.Value("string"), "source": datasets.Value("int32")})
        if self._lines:
            ds = ds.map(_tag, fn_kwargs={"source": self.index}, features=features)
        else:
            ds = ds.map(_encode_row, fn_kwargs={"source": self.index}, remove_columns=self._columns, features=features)
        if world > 1:
            ds = split_dataset_by_node(ds, rank=rank, world_size=world)
        return ds.repeat(None)


def _not_blank(row: dict[str, Any]) -> bool:
    return bool(row["text"].strip())


def _first_n(spec: SourceSpec) -> int | None:
    rule = parse_sampling(spec.sampling, spec.path)
    return int(rule.amount) if rule.how == "first" and not rule.percent else None


def _tag(row: dict[str, Any], source: int) -> dict[str, Any]:
    return {"text": row["text"], "source": source}


def _encode_row(row: dict[str, Any], source: int) -> dict[str, Any]:
    return {"text": json.dumps(row, default=_to_json), "source": source}


class StreamingSamples(IterableDataset):
    """This rank's training stream: encoded samples (or ``SkippedSample`` markers) in stream
    order, split over DataLoader workers batch by batch (see the module docstring). The Trainer
    must not shard it again (``splits_itself``; ``CompareTrainer.get_train_dataloader``)."""

    splits_itself = True

    def __init__(self, specs: Sequence[SourceSpec], encoder: CompareDataset, *, seed: int, rank: int,
                 world: int, batch_size: int, head: int = 64):
        self.sources = [StreamSource(spec, i) for i, spec in enumerate(specs)]
        self.encoder, self.seed, self.rank, self.world, self.batch_size = encoder, seed, rank, world, batch_size
        weights = [s.weight if s.weight is not None else 1.0 for s in specs]
        self.probabilities = [w / sum(weights) for w in weights]
        self.position, self.state = 0, None  # where iteration starts (a resume sets both)
        self._shadow: Any = None
        self._shadow_pos = 0
        self.read_skipped = encoder.read_skipped  # a stream's bad rows are counted as they are read
        # The first rows of the *whole* stream (not this rank's share), the same on every rank, for
        # the work before training that needs samples: the filler sample, calibration, the logged example.
        self.head = CompareDataset([], encoder.processor, encoder.builder, encoder.max_length,
                                   on_error=encoder.on_error, max_image_pixels=encoder.max_image_pixels)
        self.head.samples = [s for s in self._samples(0, 1, head) if isinstance(s, Sample)]

    def describe(self) -> list[str]:
        lines = [f"mixture (streamed, rows per source unknown up front): {len(self.sources)} source(s)"]
        lines += [f"  {s.spec.path}: probability {p:.1%} of samples" for s, p in zip(self.sources, self.probabilities)]
        return lines

    def stream(self, rank: int | None = None, world: int | None = None) -> Any:
        """The mixed ``datasets.IterableDataset`` of ``rank`` (this rank by default)."""
        from datasets import interleave_datasets

        rank = self.rank if rank is None else rank
        world = self.world if world is None else world
        parts = [s.stream(rank, world) for s in self.sources]
        if len(parts) == 1:
            return parts[0]
        return interleave_datasets(parts, probabilities=self.probabilities, seed=self.seed,
                                   stopping_strategy="first_exhausted")

    def rows(self, stream: Any) -> Iterator[dict[str, Any]]:
        # ``iter(batch_size=1)`` reads the stream in this process as it is: ``datasets`` splits a
        # stream over DataLoader workers only when the worker iterates the dataset object itself.
        for batch in stream.iter(batch_size=1):
            yield {"text": batch["text"][0], "source": batch["source"][0]}

    def parse(self, row: dict[str, Any], position: int) -> Sample:
        ctx = self.sources[row["source"]].ctx
        try:
            data = json.loads(row["text"], object_hook=_from_json)
        except json.JSONDecodeError as err:
            raise DataError(f"{ctx.source}: a line is not valid JSON: {err}", str(position), "bad_row") from None
        return parse_row(data, position, ctx)

    def _samples(self, rank: int, world: int, n: int) -> list[Sample | DataError]:
        out: list[Sample | DataError] = []
        for position, row in enumerate(self.rows(self.stream(rank, world))):
            if position >= n:
                break
            try:
                out.append(self.parse(row, position))
            except DataError as err:
                out.append(err)
        return out

    def __iter__(self) -> Iterator[dict[str, Any] | SkippedSample]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        stream = self.stream()
        if self.state is not None:
            stream.load_state_dict(self.state)
        for offset, row in enumerate(self.rows(stream)):
            if (offset // self.batch_size) % workers != worker:
                continue  # another worker's batch
            position = self.position + offset
            try:
                sample = self.parse(row, position)
            except DataError as err:
                if self.encoder.on_error == "raise":
                    raise
                yield SkippedSample(err.sample_id, err.kind, err.detail)
                continue
            yield self.encoder.item(sample)

    def __getstate__(self) -> dict[str, Any]:
        # a worker gets the settings and the resume point, never the training process's reader
        return {**self.__dict__, "_shadow": None}

    # --- position and state (the training process) ------------------------------------------------
    def resume(self, position: int, state: dict[str, Any]) -> None:
        """Start at ``position`` rows into this rank's stream, with ``state`` its ``state_dict()`` there."""
        self.position, self.state = position, state
        self._shadow, self._shadow_pos = None, position

    def state_at(self, position: int) -> dict[str, Any]:
        """This rank's stream state after ``position`` rows (``>=`` any earlier call's): a reader
        here advances to it, reading rows without encoding them."""
        if self._shadow is None:
            ds = self.stream()
            if self.state is not None:
                ds.load_state_dict(self.state)
            self._shadow, self._shadow_pos = (ds, iter(ds.iter(batch_size=1))), self.position
        ds, rows = self._shadow
        if position < self._shadow_pos:
            raise ValueError(f"stream state asked for row {position}, behind the reader at {self._shadow_pos}")
        for _ in range(position - self._shadow_pos):
            next(rows)
        self._shadow_pos = position
        return {"position": position, "stream": ds.state_dict(), "rank": self.rank, "world_size": self.world}


