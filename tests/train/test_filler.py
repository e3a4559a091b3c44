"""The filler a rank trains on when its whole micro-batch was skipped: the first usable sample with
every label masked. It must reach every trained module (so ZeRO-3/FSDP collectives line up) and
change nothing: loss exactly 0, every gradient exactly 0. (The 2-process run is in
test_distributed_hangs.py.)"""

import pytest
import torch
from PIL import Image

from llava_compare.data.collator import SKIP_STATS_KEY, CompareCollator
from llava_compare.data.conversation import IGNORE, ConversationBuilder
from llava_compare.data.dataset import CompareDataset
from llava_compare.data.sample import DataError, Message, Sample
from llava_compare.model.build import build_model
from llava_compare.train.filler import FILLER_KEY, FillSkippedBatches, first_usable_sample
from tests.conftest import tiny_model_cfg


def sample(sid: str, images: list[str]) -> Sample:
    return Sample(sid, [Message("user", "<image> <image> Which is brighter?"), Message("assistant", "Image 1")],
                  images=images)


@pytest.fixture()
def dataset(tmp_path):
    _, processor = build_model(tiny_model_cfg())
    good = []
    for i in range(2):
        good.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (32, 32), (120 * i, 50, 50)).save(good[-1])
    samples = [sample("missing", [good[0], str(tmp_path / "nope.png")]), sample("good", good)]
    return CompareDataset(samples, processor, ConversationBuilder(processor.tokenizer, system=""), 512)


@pytest.mark.parametrize("packing", [False, True])
def test_all_skipped_micro_batch_becomes_masked_filler_with_zero_loss_and_zero_gradients(dataset, packing):
    filler = first_usable_sample(dataset)
    assert filler["sample_id"] == "good"  # the unusable first sample is passed over
    collate = FillSkippedBatches(CompareCollator(dataset.processor.tokenizer.pad_token_id, packing=packing,
                                                 report_skips=True), filler)
    bad = dataset[0]
    batch = collate([bad, bad])
    assert batch.pop(FILLER_KEY) is True
    assert batch["sample_ids"] == []  # counts as no sample seen
    assert batch.pop(SKIP_STATS_KEY) == {"seen": 2, "skipped": [bad, bad]}  # both skips still reported
    assert (batch["labels"] == IGNORE).all() and batch["pixel_values"].shape[0] == 2

    model, _ = build_model(tiny_model_cfg())
    model.train()
    out = model(**batch)
    assert out.loss.item() == 0.0
    out.loss.backward()
    for module in (model.compressor, model.language_model):
        for name, p in module.named_parameters():
            assert p.grad is not None, f"{name} got no gradient: a sharded run would wait on it"
            assert not p.grad.any(), name

    good = collate([dataset[1]])
    assert FILLER_KEY not in good and not (good["labels"] == IGNORE).all()  # real batches pass through


def test_no_usable_sample_is_a_clear_error(dataset):
    dataset.samples = dataset.samples[:1]
    with pytest.raises(DataError, match="none of the 1 training samples is usable.*validate"):
        first_usable_sample(dataset)
