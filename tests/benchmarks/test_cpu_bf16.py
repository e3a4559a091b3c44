"""benchmarks/cpu_bf16.py prints both timings and the choice optim.bf16=null makes on this CPU."""

import subprocess
import sys
from pathlib import Path

from llava_compare.train import precision

REPO = Path(__file__).resolve().parents[2]


def test_prints_both_precisions_and_the_auto_choice():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cpu_bf16.py"), "--repeats", "1", "--threads", "1"],
                         capture_output=True, text=True, check=True).stdout
    assert "fp32" in out and "bf16 autocast" in out
    assert f"picks {'bf16' if precision.auto_bf16() else 'fp32'} here" in out
