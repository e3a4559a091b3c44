"""``benchmarks/data_scale.py --dry-run``: the benchmark's code path at 2,000 rows (numbers are
never asserted; only that every arm ran on both ranks and both workers, over the same rows)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_dry_run_measures_every_arm(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "data_scale.py"), "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "data_scale.json").read_text())
    assert results["convert"]["rows"] == 2000
    for arm in ("baseline", "list", "arrow"):
        ranks = results[arm]
        assert [r["rank"] for r in ranks] == [0, 1] and all(r["samples"] == 100 for r in ranks), arm
        assert all(len(r["workers"]) == 2 and r["hwm_gb"] > 0 for r in ranks), arm
    assert results["list"][0]["rows"] == results["arrow"][0]["rows"] == 2000
    assert "one-time Arrow conversion" in proc.stdout and "arrow" in proc.stdout
