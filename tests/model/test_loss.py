"""The labelled-position loss is computed in chunks of positions: its value and every gradient equal
the one-shot ``lm_head(hidden[sel]).float()`` cross-entropy, while no autograd graph keeps more
than one chunk of fp32 logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from llava_compare.data.padding import IGNORE
from llava_compare.model.build import build_model
from tests.conftest import tiny_model_cfg

PROMPT = "Image 1: <image> Image 2: <image>\nWhich image is brighter? ASSISTANT: Image 1 is brighter</s>"


@pytest.fixture()
def model_and_batch():
    """A fresh tiny model in train mode and a 2-row batch with 10+ labelled positions per row."""
    model, processor = build_model(tiny_model_cfg())
    images = [Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (20, 200, 40))]
    one = processor(text=PROMPT, images=images)
    ids = one["input_ids"].repeat(2, 1)  # [2, S]
    labels = ids.clone()
    labels[0, :-12] = IGNORE
    labels[1, :-7] = IGNORE
    batch = {"input_ids": ids, "pixel_values": torch.cat([one["pixel_values"]] * 2), "labels": labels}
    return model.train(), batch


def _reference_loss(model, batch, num_items_in_batch=None) -> torch.Tensor:
    """The unchunked computation: full logits at labelled positions, fp32, one cross-entropy."""
    out = model.language_model.get_decoder()(
        inputs_embeds=model.merge_image_features(
            batch["input_ids"], model.get_input_embeddings()(batch["input_ids"]),
            model.get_image_features(batch["pixel_values"])))
    shift = batch["labels"][:, 1:]
    sel = shift != IGNORE
    logits = model.get_output_embeddings()(out.last_hidden_state[:, :-1][sel]).float()  # [N, V]
    loss = F.cross_entropy(logits, shift[sel], reduction="sum")
    return loss / (num_items_in_batch if num_items_in_batch is not None else sel.sum())


def _grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    names = ["language_model.lm_head.weight", "compressor.queries" if hasattr(model.compressor, "queries") else "",
             "language_model.model.layers.0.mlp.up_proj.weight"]
    params = dict(model.named_parameters())
    picked = {n: params[n].grad.clone() for n in names if n in params}
    picked.update({n: p.grad.clone() for n, p in params.items() if n.startswith("compressor.") and p.grad is not None})
    return picked


@pytest.mark.parametrize("num_items", [None, 37], ids=["own-count", "num_items_in_batch"])
def test_chunked_loss_and_gradients_equal_the_unchunked_computation(model_and_batch, num_items):
    model, batch = model_and_batch
    model.loss_chunk_elements = 3 * model.config.text_config.vocab_size  # 3 positions per chunk
    torch.manual_seed(0)
    ours = model(**batch, num_items_in_batch=num_items).loss
    got = _grads(model, ours)
    ref = _reference_loss(model, batch, num_items)
    want = _grads(model, ref)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    assert got.keys() == want.keys() and len(got) >= 3
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


def test_gradient_wrt_hidden_states_and_lm_head_equal_unchunked():
    """The loss function alone, on leaf hidden states: d loss / d hidden and d loss / d W."""
    from llava_compare.model.modeling import labelled_loss

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 9, 16, generator=g, requires_grad=True)
    head = torch.nn.Linear(16, 50, bias=False)
    labels = torch.randint(0, 50, (2, 9), generator=g)
    labels[0, :3] = IGNORE
    loss, logits = labelled_loss(hidden, labels, head, None, chunk_rows=4, return_logits=False)
    assert logits is None
    dh, dw = torch.autograd.grad(loss, [hidden, head.weight])
    sel = labels[:, 1:] != IGNORE
    ref = F.cross_entropy(head(hidden[:, :-1][sel]).float(), labels[:, 1:][sel])
    rh, rw = torch.autograd.grad(ref, [hidden, head.weight])
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dh, rh, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dw, rw, rtol=1e-6, atol=1e-6)


def test_loss_is_computed_in_chunks_and_keeps_no_full_fp32_logits(model_and_batch):
    """The LM head runs on at most ``chunk`` positions at a time, and nothing of size N x V in
    fp32 is saved for backward (the old one-shot loss saved cross-entropy's [N, V] log-softmax)."""
    model, batch = model_and_batch
    vocab = model.config.text_config.vocab_size
    model.loss_chunk_elements = 4 * vocab  # 4 positions per chunk
    n_labelled = int((batch["labels"][:, 1:] != IGNORE).sum())
    rows: list[int] = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    saved: list[int] = []  # rows of every [n, V] tensor the graph keeps for backward

    head_weight = model.get_output_embeddings().weight

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 2 and t.shape[-1] == vocab and t.data_ptr() != head_weight.data_ptr():
            saved.append(t.shape[0])
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(**batch).loss
    finally:
        handle.remove()
    assert rows == [4] * (n_labelled // 4) + ([n_labelled % 4] if n_labelled % 4 else [])
    assert len(rows) == math.ceil(n_labelled / 4) > 1
    assert max(saved, default=0) <= 4, f"[n, V] logits of {max(saved)} positions kept for backward"
    loss.backward()  # the recomputation in backward works


def test_eval_forward_still_returns_labelled_logits(model_and_batch):
    """Option scoring (eval/scoring.py) reads ``out.logits`` at labelled positions in eval mode."""
    model, batch = model_and_batch
    model.eval()
    model.loss_chunk_elements = 2 * model.config.text_config.vocab_size
    with torch.no_grad():
        out = model(**batch)
        full = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"]).logits
    shift = batch["labels"][:, 1:]
    want = full[:, :-1][shift != IGNORE]
    torch.testing.assert_close(out.logits.float(), want.float(), rtol=0, atol=1e-5)
    ref = F.cross_entropy(want.float(), shift[shift != IGNORE])
    torch.testing.assert_close(out.loss, ref, rtol=1e-6, atol=1e-6)
    model.train()
    assert model(**batch).logits is None  # training: no [N, V] tensor is built


def test_lora_gradients_equal_unchunked(model_and_batch):
    """Through a PEFT model (LoRA on every linear layer): the LoRA gradients match too."""
    from llava_compare.train.stages import configure_stage

    model, batch = model_and_batch
    stage = {"train_llm": "lora", "train_compressor": True, "train_vision": False}
    peft = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    lora = configure_stage(model, stage, peft).train()
    base = lora.get_base_model()
    base.loss_chunk_elements = 3 * base.config.text_config.vocab_size
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B starts at 0: perturb so the LoRA path matters
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    lora.zero_grad(set_to_none=True)
    lora(**batch).loss.backward()
    got = {n: p.grad.clone() for n, p in lora.named_parameters() if p.requires_grad}
    lora.zero_grad(set_to_none=True)
    _reference_loss(base, batch).backward()
    want = {n: p.grad.clone() for n, p in lora.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in want) and got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
