"""The feature cache over two ranks (gloo, spawned processes): the ranks decide completion through
the process group, not by counting files a 4-rank run left behind, and a folder that is not
shared between the ranks fails at once on every rank with what to fix.

One spawn runs both cases (starting two processes costs most of the time)."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

DEADLINE_S = 120  # healthy: ~15 s here; a hang fails the test instead of blocking CI


def _worker(rank: int, tmp: str, captions: str, stale_folder: str) -> None:
    """Case 1: each rank given its own folder (as node-local disks would). Case 2: a shared
    folder holding a 4-rank run's leftovers, rank 1 slower than rank 0."""
    from llava_compare.data import feature_cache as fc
    from llava_compare.data.formats import SourceSpec, read_sources
    from llava_compare.model.build import build_model
    from tests.conftest import tiny_model_cfg

    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    model, processor = build_model(tiny_model_cfg())
    samples = read_sources([SourceSpec(path=captions)])
    out: dict = {}
    fc.PROBE_WAIT_S = 1.0
    keyed: list = []  # image keys this rank computed (each a stat() of the image file)
    real_key = fc.image_key
    fc.image_key = lambda image: keyed.append(image) or real_key(image)
    try:
        fc.build_feature_cache(model, processor, samples, f"{tmp}/node{rank}", rank, 2, timeout_s=5)
    except Exception as err:  # noqa: BLE001 -- the test checks which, on both ranks
        out["unshared"] = f"{type(err).__name__}: {err}"
    if rank == 1:
        time.sleep(3)  # rank 0 must not call the cache complete before rank 1 has written its share
    try:
        cache = fc.build_feature_cache(model, processor, samples, f"{tmp}/shared", rank, 2, timeout_s=60)
        out["folder_ok"] = str(cache.folder) == stale_folder
        out["features"] = {k: cache[k].tolist() for k in sorted(cache.index)}
    except Exception as err:  # noqa: BLE001 -- reported by the test, with the rank
        out["shared"] = f"{type(err).__name__}: {err}"
    out["keyed"] = len(keyed)
    Path(tmp, f"rank{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


def _plant_four_rank_leftovers(folder: Path, keys: list[str], like: torch.Tensor) -> None:
    """What a crashed 4-rank build leaves: indexes of ranks 2 and 3 (one pointing at zeros)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    two, three = [k for k in keys if int(k, 16) % 4 == 2], [k for k in keys if int(k, 16) % 4 == 3]
    save_file({k: torch.zeros_like(like) for k in two}, str(folder / "rank002-00000.safetensors"))
    (folder / "index-rank002.json").write_text(json.dumps({k: "rank002-00000.safetensors" for k in two}))
    (folder / "index-rank003.json").write_text(json.dumps({k: "rank003-00000.safetensors" for k in three}))


@pytest.fixture(scope="module")
def two_ranks(synth_dir, tmp_path_factory, tiny):
    """(per-rank results, single-process reference features) of one 2-rank spawn."""
    from llava_compare.data.feature_cache import _image_set_hash, _readable_images, build_feature_cache, fingerprint
    from llava_compare.data.formats import SourceSpec, read_sources

    tmp = tmp_path_factory.mktemp("ranks")
    model, processor = tiny
    captions = str(synth_dir / "captions.json")
    samples = read_sources([SourceSpec(path=captions)])
    reference = build_feature_cache(model, processor, samples, tmp / "reference")
    keys = sorted(_readable_images(samples))
    folder = tmp / "shared" / f"{fingerprint(model, processor)}-{_image_set_hash(_readable_images(samples))}"
    _plant_four_rank_leftovers(folder, keys, reference[keys[0]])
    ctx = mp.start_processes(_worker, args=(str(tmp), captions, str(folder)), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.time() + DEADLINE_S
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the 2-rank feature cache build hung (still running after {DEADLINE_S} s)")
    results = [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]
    return results, {k: reference[k] for k in keys}, folder


def test_a_folder_the_ranks_do_not_share_fails_at_once_on_every_rank(two_ranks):
    results, _, _ = two_ranks
    for r in results:
        assert r["unshared"].startswith("ValueError: data.feature_cache=")
        assert "is not shared: rank 1 cannot see files rank 0 writes there; put the cache on a " \
               "filesystem every node mounts" in r["unshared"]


def test_leftovers_of_a_four_rank_run_do_not_complete_a_two_rank_cache(two_ranks):
    results, reference, folder = two_ranks
    for rank, r in enumerate(results):
        assert "shared" not in r, f"rank {rank}: {r['shared']}"
        assert r["folder_ok"]
        assert sorted(r["features"]) == sorted(reference)  # rank 1's share included
        for k, values in r["features"].items():
            assert torch.allclose(torch.tensor(values), reference[k], atol=1e-5), k
    marker = json.loads((folder / "complete.json").read_text())
    assert marker["world_size"] == 2 and len(marker["index"]) == 2
    assert not (folder / "index-rank002.json").exists() and not (folder / "rank002-00000.safetensors").exists()


def test_only_rank_0_stats_the_image_files(two_ranks):
    """Keys (path + size + mtime) are computed on rank 0 and handed over: on a shared filesystem
    every rank stat()-ing every image multiplies the metadata calls by the world size."""
    results, reference, _ = two_ranks
    assert results[0]["keyed"] >= len(reference) and results[1]["keyed"] == 0
