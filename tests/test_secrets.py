"""No secret leaks: with HF_TOKEN and WANDB_API_KEY set to marker strings, a tiny training run
(wandb logging offline into the run directory, checkpoints saved) and an export write no file that
contains either marker, and the logs do not print them."""

from __future__ import annotations

from pathlib import Path

from llava_compare.ship.export import export
from llava_compare.train.main import run
from tests.conftest import stage_cfg

HF_MARKER = "hf_LEAKCHECKxHFxTOKENx7f3a"
WANDB_MARKER = "LEAKCHECKxWANDBxKEYx91c2"


def files_with(root: Path, markers: list[bytes]) -> list[str]:
    return [f"{p} ({m.decode()})" for p in sorted(root.rglob("*")) if p.is_file()
            for m in markers if m in p.read_bytes()]


def test_tokens_never_reach_run_or_export_files(synth_dir, tmp_path, monkeypatch, capfd):
    run_dir, export_dir = tmp_path / "run", tmp_path / "export"
    monkeypatch.setenv("HF_TOKEN", HF_MARKER)
    monkeypatch.setenv("WANDB_API_KEY", WANDB_MARKER)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(run_dir))  # wandb's files land in the scanned folder
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir.mkdir()
    import wandb

    wandb.finish()  # a wandb run earlier in this process would keep its WANDB_DIR otherwise
    wandb.teardown()
    result = run(stage_cfg("tiny_demo_stage2", synth_dir, run_dir, 2, "init_from=null", "save_steps=1", "logger=wandb"))
    wandb.finish()  # flush the offline run files before reading them
    wandb.teardown()  # forget WANDB_DIR: later runs in this process must read their own settings
    export(result.output_dir, export_dir)

    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert any(p.startswith("run/wandb/") for p in written)  # the wandb run really wrote files here
    assert any(p.startswith("run/checkpoint-") for p in written) and "export/README.md" in written
    assert files_with(tmp_path, [HF_MARKER.encode(), WANDB_MARKER.encode()]) == []
    logs = capfd.readouterr()
    assert HF_MARKER not in logs.out + logs.err and WANDB_MARKER not in logs.out + logs.err
