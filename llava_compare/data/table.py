"""Training rows kept in Arrow: each source a memory-mapped ``datasets`` table, a row parsed into a
``Sample`` only when it is read (``SampleTable[i]``).

A Python list of ``Sample`` objects per rank, inherited by every DataLoader worker (reference counts
touch its pages, so copy-on-write copies them), costs GBs of host memory for a 500K-row dataset;
the Arrow files are shared by every rank and worker through the page cache instead. What the whole
set is needed for -- the read-skip rate, ``llava-compare validate``'s row counts, the length
estimates behind grouping and bin planning, the mixture's shares -- comes from a small *index*
table per data file, computed once by ``Dataset.map`` (one pass of the row parser) and cached by
``datasets`` next to the data's own Arrow cache, keyed by its fingerprint (the file and the parse
settings): columns ``ok``, ``kind``, ``detail``, ``sample_id`` (problems), ``n_images``,
``text_chars`` (lengths).

Cost model: a JSON *array* file is parsed whole by ``datasets`` once, into its Arrow cache (500K
Co-Instruct rows: ~46 s and several GB of memory, once); JSONL and parquet stream. After that a run
opens the cached Arrow files in well under a second. Files ``datasets`` cannot type (heterogeneous
rows, invalid UTF-8) fall back to the ``json`` module's rows, held in memory (``formats.load_rows``).
No image file is touched here: a missing image is found when its sample is read.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np

from .formats import ON_ERROR_MODES, SourceSpec, make_context, open_files
from .mixture import MixtureRule, describe, parse_sampling, plan
from .problems import ProblemLog
from .rows import RowContext, parse_row
from .sample import DataError, Sample

log = logging.getLogger(__name__)

INDEX_COLUMNS = ("ok", "kind", "detail", "sample_id", "n_images", "text_chars")


def index_batch(batch: dict[str, list[Any]], indices: list[int], ctx: RowContext) -> dict[str, list[Any]]:
    """The index columns of a batch of rows (``Dataset.map(batched=True)``): each row parsed once."""
    out: dict[str, list[Any]] = {name: [] for name in INDEX_COLUMNS}
    keys = list(batch)
    for values, index in zip(zip(*(batch[k] for k in keys)), indices):
        _index_row(dict(zip(keys, values)), index, ctx, out)
    return out


def _index_row(row: Any, index: int, ctx: RowContext, out: dict[str, list[Any]]) -> None:
    try:
        sample = parse_row(row, index, ctx)
    except DataError as err:
        for name, value in zip(INDEX_COLUMNS, (False, err.kind, err.detail, err.sample_id or "", 0, 0)):
            out[name].append(value)
        return
    chars = sum(len(m.content) for m in sample.messages)
    for name, value in zip(INDEX_COLUMNS, (True, "", "", sample.id, len(sample.images), chars)):
        out[name].append(value)


def _index_columns(rows: Any, ctx: RowContext) -> tuple[dict[str, np.ndarray], list[tuple[int, str, str, str]]]:
    """The index of one file's rows: the numeric columns as numpy arrays, and the bad rows as
    ``(row, kind, detail, sample_id)`` (only those rows' strings are ever turned into Python)."""
    import datasets

    if isinstance(rows, datasets.Dataset):
        features = datasets.Features({"ok": datasets.Value("bool"), "kind": datasets.Value("string"),
                                      "detail": datasets.Value("string"), "sample_id": datasets.Value("string"),
                                      "n_images": datasets.Value("int32"), "text_chars": datasets.Value("int64")})
        index = rows.map(index_batch, batched=True, batch_size=1000, with_indices=True, fn_kwargs={"ctx": ctx},
                         remove_columns=rows.column_names, features=features, desc=f"indexing {ctx.source}")
        table = index.with_format("arrow")[:]
        cols = {name: table.column(name).to_numpy() for name in ("ok", "n_images", "text_chars")}
        bad_rows = np.nonzero(~cols["ok"])[0]
        picked = table.select(["kind", "detail", "sample_id"]).take(bad_rows).to_pydict()
        return cols, list(zip(bad_rows.tolist(), picked["kind"], picked["detail"], picked["sample_id"]))
    out: dict[str, list[Any]] = {name: [] for name in INDEX_COLUMNS}
    for i, row in enumerate(rows):
        _index_row(row, i, ctx, out)
    cols = {name: np.asarray(out[name]) for name in ("ok", "n_images", "text_chars")}
    bad = [(i, out["kind"][i], out["detail"][i], out["sample_id"][i]) for i in np.nonzero(~cols["ok"].astype(bool))[0]]
    return cols, bad


class SourceRows:
    """One source's rows (every data file of it) and their index; ``sample(k)`` parses the k-th
    usable row. ``max_samples`` counts usable rows, as the list reader does."""

    def __init__(self, spec: SourceSpec, on_error: str = "raise"):
        spec.validate()
        if on_error not in ON_ERROR_MODES:
            raise ValueError(f"unknown on_error {on_error!r}; valid: {', '.join(ON_ERROR_MODES)}")
        self.spec = spec
        self.files: list[tuple[Any, RowContext]] = []
        starts, usable, n_images, chars, bad = [], [], [], [], []
        total = 0
        for source, rows, root in open_files(spec):
            if len(rows) == 0:
                continue
            ctx = make_context(spec, rows[0], source, root)
            cols, bad_here = _index_columns(rows, ctx)
            starts.append(total)
            self.files.append((rows, ctx))
            ok = cols["ok"].astype(bool)
            usable.append(np.nonzero(ok)[0] + total)
            n_images.append(cols["n_images"][ok].astype(np.int32))
            chars.append(cols["text_chars"][ok].astype(np.int64))
            bad += [(int(i) + total, kind, detail, sid) for i, kind, detail, sid in bad_here]
            total += len(rows)
        self._starts = starts
        cat = (lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt))
        self.usable, self.n_images, self.text_chars = cat(usable, np.int64), cat(n_images, np.int32), cat(chars, np.int64)
        if spec.max_samples is not None and spec.max_samples < len(self.usable):
            cutoff = int(self.usable[spec.max_samples - 1]) if spec.max_samples else -1
            self.usable, self.n_images, self.text_chars = (a[: spec.max_samples] for a in
                                                           (self.usable, self.n_images, self.text_chars))
            bad = [b for b in bad if b[0] < cutoff]  # rows past the limit are never read
        self.skipped = ProblemLog()
        if bad and on_error == "raise":
            self._row(bad[0][0], parse=True)  # the row's own DataError, as the list reader raises it
        for _, kind, detail, sample_id in bad:
            self.skipped.add(DataError(detail, sample_id or None, kind))
        if self.skipped:
            log.warning("%s: skipped %d samples: %s", spec.path, sum(self.skipped.values()), dict(self.skipped))

    @property
    def name(self) -> str:
        return self.spec.path

    def __len__(self) -> int:
        return len(self.usable)

    def _row(self, position: int, parse: bool = True) -> Any:
        f = bisect.bisect_right(self._starts, position) - 1
        rows, ctx = self.files[f]
        local = position - self._starts[f]
        return parse_row(rows[local], local, ctx) if parse else rows[local]

    def sample(self, k: int) -> Sample:
        return self._row(int(self.usable[k]))


class SampleTable(Sequence[Sample]):
    """The samples of several sources as one sequence in mixture order (``data/mixture.py``):
    ``table[i]`` parses one row. Holds only the row tables and small numpy arrays."""

    def __init__(self, sources: Sequence[SourceRows], drawn: Sequence[np.ndarray]):
        self.sources = list(sources)
        self.drawn = list(drawn)
        self._source = np.concatenate([np.full(len(d), i, np.int32) for i, d in enumerate(drawn)]) \
            if drawn else np.zeros(0, np.int32)
        self._pos = np.concatenate(drawn) if drawn else np.zeros(0, np.int64)
        self.skipped = ProblemLog()
        for src in self.sources:
            self.skipped.merge(src.skipped)

    def __len__(self) -> int:
        return len(self._pos)

    @overload
    def __getitem__(self, i: int) -> Sample: ...
    @overload
    def __getitem__(self, i: slice) -> list[Sample]: ...

    def __getitem__(self, i: int | slice) -> Sample | list[Sample]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range ({len(self)} samples)")
        return self.sources[self._source[i]].sample(int(self._pos[i]))

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def usable_rows(self) -> int:
        """Rows the readers kept (each counted once, whatever the mixture draws)."""
        return sum(len(s) for s in self.sources)

    def estimated_lengths(self, tokens_per_image: int) -> np.ndarray:
        """Per sample: image tokens (exact) + text characters // 4, from the index columns."""
        parts = [s.n_images[d].astype(np.int64) * tokens_per_image + s.text_chars[d] // 4
                 for s, d in zip(self.sources, self.drawn)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def describe(self, tokens_per_image: int) -> list[str]:
        """The realised mixture: per source its rows, share of samples and of estimated tokens."""
        tokens = [int((s.n_images[d].astype(np.int64) * tokens_per_image + s.text_chars[d] // 4).sum())
                  for s, d in zip(self.sources, self.drawn)]
        return describe([s.name for s in self.sources], [len(s) for s in self.sources],
                         [len(d) for d in self.drawn], tokens)


def mixture_rule(spec: SourceSpec) -> MixtureRule:
    return MixtureRule(spec.path, parse_sampling(spec.sampling, spec.path), spec.repeat, spec.weight)


def open_sources(specs: Sequence[SourceSpec], *, on_error: str = "raise", seed: int = 0,
                 mixture: bool = True) -> SampleTable:
    """The sources as one ``SampleTable``: in mixture order (``mixture=True``: weights, repeat,
    sampling applied with ``seed``), or every usable row once in source order (``validate``)."""
    sources = [SourceRows(spec, on_error) for spec in specs]
    if not mixture:
        return SampleTable(sources, [np.arange(len(s)) for s in sources])
    return SampleTable(sources, plan([mixture_rule(s) for s in specs], [len(s) for s in sources], seed))
