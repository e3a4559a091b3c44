"""Start-up time and host memory of the training data at Co-Instruct scale (BENCHMARKS.md).

    python benchmarks/data_scale.py [--rows 500000] [--out outputs/data_scale]     # make bench-data
    python benchmarks/data_scale.py --dry-run       # 2,000 rows, the same code path (tested)

Writes a Co-Instruct-layout JSON array once (``--rows`` rows, 2-4 images each, text only: the image
paths are referenced, never written), then times ``read + first 100 samples`` under
``torchrun --nproc_per_node=2`` with a DataLoader of 2 workers per rank, for three arms:

- ``baseline``: the same processes importing the package (and ``datasets``), the DataLoader
  workers over 100 dummy items -- what every arm costs anyway;
- ``list``: the old path, every row read into a Python list of ``Sample`` objects on every rank
  (``formats.read_sources``), which the forked workers inherit;
- ``arrow``: the new path, ``table.open_sources``: memory-mapped Arrow tables and their cached
  index, a row parsed when a worker reads it.

Each rank reads its first 100 samples through the DataLoader (each worker parses its share into
``Sample``s; no tokenising). Reported per process (ranks and workers): VmHWM (peak RSS; shared pages
count in every process that touched them, which is how a list inherited by workers costs) and PSS at
the end (shared pages split between the processes), and per rank the wall time from process start.
The one-time Arrow conversion (``datasets`` parsing the JSON array whole, then the index pass) runs
first, in one process with a fresh ``HF_DATASETS_CACHE``, and is reported on its own line; both
the list and arrow arms then read the converted cache (the old path read JSON through ``datasets``
too). Writes ``OUT/data_scale.json`` and prints the table BENCHMARKS.md shows.
"""

from __future__ import annotations

import time

T0 = time.time()  # before the heavy imports: a rank's wall time starts at its process start

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.*` from a plain script

ARMS = ("baseline", "list", "arrow")
FIRST = 100  # samples each rank reads
WORKERS = 2
NPROC = 2
ORDINALS = ["first", "second", "third", "fourth"]
QUALITY = ["clarity", "sharpness", "noise", "exposure", "colour fidelity", "contrast", "composition"]
DEADLINE_S = 1800


def write_coinstruct(path: Path, rows: int, seed: int = 0) -> None:
    """``rows`` Co-Instruct-DB rows (llava layout, "The first image: <image>" markers), streamed out."""
    rng = random.Random(seed)
    filler = ("The detail in the foreground is well preserved while the background shows mild blur; "
              "edges stay crisp and the texture of the surfaces is visible. ")
    with path.open("w") as f:
        f.write("[")
        for i in range(rows):
            n = rng.randint(2, 4)
            marked = "\n".join(f"The {ORDINALS[k]} image: <image>" for k in range(n))
            q = rng.choice(QUALITY)
            answer = f"The {ORDINALS[rng.randrange(n)]} image has the best {q}. " + filler * rng.randint(4, 9)
            row = {"id": f"coinstruct-{i}", "image": [f"images/{i // 1000}/{i}_{k}.jpg" for k in range(n)],
                   "conversations": [{"from": "human", "value": f"{marked}\nWhich image has the best {q}? Explain."},
                                     {"from": "gpt", "value": answer}]}
            f.write(("," if i else "") + json.dumps(row))
        f.write("]")


def status(field: str) -> float:
    """A memory field of /proc/self/status (VmHWM, VmRSS) in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1e6
    return 0.0


def pss() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1e6
    return 0.0


class Probe:
    """The DataLoader's dataset: item ``i`` parses sample ``i`` (none in the baseline) and reports
    the worker's pid and memory with it."""

    def __init__(self, samples: Any):
        self.samples = samples

    def __len__(self) -> int:
        return FIRST if self.samples is None else len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sid = None if self.samples is None else self.samples[i].id
        return {"id": sid, "pid": os.getpid(), "hwm": status("VmHWM"), "pss": pss()}


def worker(arm: str, data: str, out: Path) -> None:
    """One rank of one arm (under torchrun)."""
    import llava_compare.data.table  # noqa: F401 - the package import every arm pays
    from llava_compare import ranks
    import datasets  # noqa: F401
    from torch.utils.data import DataLoader

    from llava_compare.data.formats import SourceSpec, read_sources
    from llava_compare.data.table import open_sources

    rank = ranks.rank()
    t_import = time.time() - T0
    spec = SourceSpec(path=data, format="llava")
    samples = {"baseline": lambda: None, "list": lambda: read_sources([spec]),
               "arrow": lambda: open_sources([spec])}[arm]()
    t_read = time.time() - T0
    start = rank * FIRST if samples is not None else 0
    loader = DataLoader(Probe(samples), batch_size=10, num_workers=WORKERS, collate_fn=list,
                        sampler=range(start, start + FIRST))
    workers: dict[int, dict[str, float]] = {}
    n = 0
    for batch in loader:
        for item in batch:
            n += 1
            w = workers.setdefault(item["pid"], {"hwm": 0.0, "pss": 0.0})
            w["hwm"], w["pss"] = max(w["hwm"], item["hwm"]), item["pss"]
    report = {"rank": rank, "samples": n, "rows": None if samples is None else len(samples),
              "import_s": round(t_import, 2), "read_s": round(t_read, 2), "wall_s": round(time.time() - T0, 2),
              "hwm_gb": status("VmHWM"), "pss_gb": pss(), "workers": list(workers.values())}
    (out / f"{arm}_rank{rank}.json").write_text(json.dumps(report))


def convert(data: str, out: Path) -> None:
    """The one-time conversion: JSON -> Arrow cache -> index (a fresh cache, one process)."""
    from llava_compare.data.formats import SourceSpec
    from llava_compare.data.table import open_sources

    t = time.time()
    rows = len(open_sources([SourceSpec(path=data, format="llava")]))
    (out / "convert.json").write_text(json.dumps({"rows": rows, "seconds": round(time.time() - t, 1),
                                                  "hwm_gb": status("VmHWM")}))


def launch(args: list[str], env: dict[str, str], nproc: int) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
           __file__, *args] if nproc > 1 else [sys.executable, __file__, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=DEADLINE_S)
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")


def table(results: dict[str, Any]) -> str:
    lines = [f"one-time Arrow conversion (1 process, fresh cache): {results['convert']['seconds']} s, "
             f"peak RSS {results['convert']['hwm_gb']:.2f} GB, {results['convert']['rows']} rows",
             "arm       wall s (max rank)  read s  VmHWM ranks (GB)   VmHWM workers (GB)        "
             "sum VmHWM  over base  sum PSS"]
    base = None
    for arm in ARMS:
        ranks = results[arm]
        hwm = [r["hwm_gb"] for r in ranks]
        workers = [w["hwm"] for r in ranks for w in r["workers"]]
        total = sum(hwm) + sum(workers)
        total_pss = sum(r["pss_gb"] for r in ranks) + sum(w["pss"] for r in ranks for w in r["workers"])
        base = total if base is None else base
        lines.append(f"{arm:<9} {max(r['wall_s'] for r in ranks):>17.1f}  {max(r['read_s'] for r in ranks):>6.1f}  "
                     f"{' '.join(f'{h:.2f}' for h in hwm):<17}  {' '.join(f'{h:.2f}' for h in workers):<24}  "
                     f"{total:>9.2f}  {total - base:>9.2f}  {total_pss:>7.2f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--out", default="outputs/data_scale")
    ap.add_argument("--dry-run", action="store_true", help="2,000 rows (the tested code path)")
    ap.add_argument("--worker", choices=[*ARMS, "convert"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out)
    if args.worker == "convert":
        return convert(args.data, out)
    if args.worker:
        return worker(args.worker, args.data, out)
    rows = 2000 if args.dry_run else args.rows
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"coinstruct_{rows}.json"
    if not data.is_file():
        t = time.time()
        write_coinstruct(data, rows)
        print(f"wrote {data} ({data.stat().st_size / 1e6:.0f} MB) in {time.time() - t:.0f} s", flush=True)
    cache = out / "hf_cache"
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    launch(["--worker", "convert", "--data", str(data), "--out", str(out)], env, 1)
    results: dict[str, Any] = {"rows": rows, "convert": json.loads((out / "convert.json").read_text())}
    for arm in ARMS:
        launch(["--worker", arm, "--data", str(data), "--out", str(out)], env, NPROC)
        results[arm] = [json.loads((out / f"{arm}_rank{r}.json").read_text()) for r in range(NPROC)]
    (out / "data_scale.json").write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
