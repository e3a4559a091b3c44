"""A bad-input dataset built from code: good samples plus one sample of each problem.

``write_bad_dataset(dir)`` writes small PNGs and a LLaVA-format ``data.jsonl`` (JSONL so that one
line can hold invalid UTF-8 bytes) and returns what a checker should find. Use it with
``BAD_OVERRIDES``: the pixel limit and token budget the "too large" / "too long" rows are built
against.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

MAX_PIXELS = 64 * 64  # good images are 32x32; the oversized one 80x80
MAX_LENGTH = 96  # tokens; the too-long row has a ~300-token question
BAD_OVERRIDES = [f"data.max_image_pixels={MAX_PIXELS}", f"data.max_length={MAX_LENGTH}"]

#: sample id -> the problem kind it must be reported as.
BAD = {
    "missing-image": "missing_image",
    "truncated-image": "bad_image",
    "not-an-image": "bad_image",
    "huge-image": "image_too_large",
    "placeholder-mismatch": "placeholder_count",
    "too-long": "too_long",
    "empty-answer": "empty_assistant",
    "unknown-role": "unknown_role",
    "non-utf8": "non_utf8",
}
#: kinds the reader finds (the row never becomes a sample) vs. the dataset (at __getitem__).
READ_TIME = {"placeholder_count", "unknown_role", "non_utf8"}


@dataclass
class BadDataset:
    path: Path  # the data file
    good_ids: list[str]
    bad: dict[str, str]  # sample id -> kind

    def counts(self, kinds: set[str] | None = None) -> dict[str, int]:
        out: dict[str, int] = {}
        for kind in self.bad.values():
            if kinds is None or kind in kinds:
                out[kind] = out.get(kind, 0) + 1
        return out


def _png(path: Path, size: int, colour: tuple[int, int, int]) -> str:
    Image.new("RGB", (size, size), colour).save(path)
    return path.name


def _row(sample_id: str, images: list[str], question: str, answer: str, role: str = "gpt") -> dict:
    return {"id": sample_id, "image": images,
            "conversations": [{"from": "human", "value": question}, {"from": role, "value": answer}]}


def _bad_rows(root: Path) -> list[dict]:
    good = _png(root / "ok.png", 32, (200, 30, 30))
    truncated = root / "truncated.png"
    Image.effect_noise((32, 32), 80).convert("RGB").save(truncated)  # noise: a real compressed stream
    full = truncated.read_bytes()
    truncated.write_bytes(full[: len(full) // 2])  # opens (the header is intact); fails on load()
    (root / "not-an-image.png").write_bytes(b"this is text, not a PNG\n" * 4)
    huge = _png(root / "huge.png", 80, (0, 0, 200))
    q = "<image>\nWhich colour dominates?"
    return [
        _row("missing-image", ["does-not-exist.png"], q, "Red."),
        _row("truncated-image", ["truncated.png"], q, "Grey."),
        _row("not-an-image", ["not-an-image.png"], q, "None."),
        _row("huge-image", [huge], q, "Blue."),
        _row("placeholder-mismatch", [good], "<image> <image>\nCompare them.", "Same."),
        _row("too-long", [good], "<image>\n" + "describe every detail " * 100, "Red."),
        _row("empty-answer", [good], q, "   "),
        _row("unknown-role", [good], q, "Red.", role="robot"),
    ]


def write_bad_dataset(root: Path, n_good: int = 6, only: set[str] | None = None) -> BadDataset:
    """``n_good`` good rows and the bad rows whose id is in ``only`` (all of ``BAD`` by default),
    in a fixed order. The non-UTF-8 row is a JSON line with the raw bytes 0xff 0xfe in its answer."""
    root.mkdir(parents=True, exist_ok=True)
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)]
    good_ids = [f"good-{i}" for i in range(n_good)]
    lines = []
    for i, sid in enumerate(good_ids):
        a = _png(root / f"g{i}a.png", 32, colours[i % 4])
        b = _png(root / f"g{i}b.png", 32, colours[(i + 1) % 4])
        lines.append(json.dumps(_row(sid, [a, b], "<image> <image>\nWhich is brighter?", "Image 1")).encode())
    bad = {k: v for k, v in BAD.items() if only is None or k in only}
    for row in _bad_rows(root):
        if row["id"] in bad:
            lines.insert(len(lines) // 2 + 1, json.dumps(row).encode())
    if "non-utf8" in bad:
        row = json.dumps(_row("non-utf8", ["ok.png"], "<image>\nWhich colour?", "R@@ed.")).encode()
        lines.insert(1, row.replace(b"@@", b"\xff\xfe"))
    path = root / "data.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return BadDataset(path, good_ids, bad)
