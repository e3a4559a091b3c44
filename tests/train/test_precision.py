"""optim.bf16=null (auto) turns bf16 on only where the hardware computes it natively."""

from pathlib import Path

import pytest
import torch

from llava_compare.train import precision

AVX2_EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


def test_cpu_flags_read_the_flags_line(tmp_path):
    assert precision.cpu_flags(write(tmp_path, AVX2_EPYC)) == {"fpu", "sse", "sse2", "avx", "avx2", "fma"}
    assert precision.cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize("text, native", [(AVX2_EPYC, False), (SAPPHIRE_RAPIDS, True),
                                          ("flags : avx512f avx512_bf16\n", True), ("", False)])
def test_native_bf16_needs_avx512_bf16_or_amx(tmp_path, text, native):
    assert precision.cpu_has_native_bf16(precision.cpu_flags(write(tmp_path, text))) is native


@pytest.mark.parametrize("flags, expected", [(frozenset({"avx2"}), False), (frozenset({"amx_bf16"}), True)])
def test_auto_on_cpu_follows_the_cpu(monkeypatch, flags, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    assert precision.auto_bf16() is expected


def test_auto_on_cuda_asks_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert precision.auto_bf16() is False
