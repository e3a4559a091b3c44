"""Conversation builder: messages -> token ids + labels (labels on assistant tokens only).

Uses the LM tokenizer's own chat template when it has one (so a Llama-3 or Qwen2 run speaks its
native format), vicuna_v1 (LLaVA-1.5's) otherwise. Writes the ``Image k: `` marker before the k-th
image unless the dataset already labels its images (``Sample.has_markers``) or markers are off.
Images stay as one ``<image>`` token each here; the processor expands them afterwards.

A sample it cannot encode raises :class:`DataError` and nothing else (``checks.check_conversation``
runs first; a chat template that refuses a conversation is turned into one too), so the dataset
can skip-and-count any bad sample without catching broad exceptions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from transformers import PreTrainedTokenizerBase

from .checks import check_conversation
from .padding import IGNORE
from .sample import IMAGE_PLACEHOLDER, DataError, Message, Sample

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


def insert_markers(messages: list[Message], template: str | None) -> list[Message]:
    """Put ``template.format(k=k)`` before the k-th placeholder (k counts across the dialogue)."""
    if not template:
        return messages
    counter = iter(range(1, 10_000))
    out = []
    for m in messages:
        text = re.sub(re.escape(IMAGE_PLACEHOLDER),
                      lambda _: template.format(k=next(counter)) + IMAGE_PLACEHOLDER, m.content)
        out.append(Message(m.role, text))
    return out


class ConversationBuilder:
    """Renders a ``Sample`` into ids/labels with one template, chosen once per tokenizer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: str = "auto",
                 marker_template: str | None = "Image {k}: ", system: str | None = None):
        if template == "auto":
            template = "chat" if getattr(tokenizer, "chat_template", None) else "vicuna_v1"
        if template not in ("chat", "vicuna_v1"):
            raise ValueError(f"unknown conversation template {template!r}; valid: auto, chat, vicuna_v1")
        self.tokenizer, self.template, self.marker_template = tokenizer, template, marker_template
        self.system = system

    # --- rendering into (text, trainable) segments -------------------------------------------------
    def _messages(self, sample: Sample) -> list[Message]:
        check_conversation(sample)  # roles, UTF-8, placeholder count, non-empty answers
        return sample.messages if sample.has_markers else insert_markers(sample.messages, self.marker_template)

    def _vicuna_segments(self, messages: list[Message]) -> list[tuple[str, bool]]:
        default = VICUNA_SYSTEM if self.system is None else self.system
        system = next((m.content for m in messages if m.role == "system"), default)
        segs: list[tuple[str, bool]] = []
        pending = system
        for m in messages:
            if m.role == "user":
                # LLaVA's vicuna_v1: "SYSTEM USER: q ASSISTANT: a</s>USER: q2 ASSISTANT: ..."
                pending += (" " if pending else "") + f"USER: {m.content} ASSISTANT:"
            elif m.role == "assistant":
                segs.append((pending, False))
                segs.append((f" {m.content}{self.tokenizer.eos_token}", True))
                pending = ""
        if pending:
            segs.append((pending, False))
        return segs

    def _render(self, msgs: list[dict[str, str]], generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as err:  # noqa: BLE001 - templates raise jinja errors (e.g. "roles must alternate")
            raise DataError(f"the tokenizer's chat template cannot render this conversation: "
                            f"{type(err).__name__}: {err}; fix the turn order or use "
                            "data.conversation_template=vicuna_v1", None, "template") from err

    def _chat_segments(self, messages: list[Message]) -> list[tuple[str, bool]]:
        # Prefix difference: what rendering message i adds to the prompt that ends with the
        # generation header is exactly that assistant turn (content + end-of-turn tokens).
        dicts = [{"role": m.role, "content": m.content} for m in messages]
        if self.system is not None and not any(m["role"] == "system" for m in dicts):
            # An explicit system prompt ("" included) replaces the template's default one
            # (SmolLM2's costs ~15 tokens per sample).
            dicts.insert(0, {"role": "system", "content": self.system})
        render = self._render
        segs: list[tuple[str, bool]] = []
        done = ""
        for i, m in enumerate(dicts):
            if m["role"] != "assistant":
                continue
            if i == 0 or all(d["role"] == "system" for d in dicts[:i]):  # nothing to prompt with
                raise DataError("the conversation starts with an assistant turn; with a chat template the "
                                "first turn must be a user (or system) turn", None, "template")
            prompt, full = render(dicts[:i], True), render(dicts[: i + 1], False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise DataError("the tokenizer's chat template is not prefix-stable for this conversation, "
                                "so assistant tokens cannot be told apart; use "
                                "data.conversation_template=vicuna_v1", None, "template")
            segs += [(prompt[len(done):], False), (full[len(prompt):], True)]
            done = full
        return segs

    def segments(self, messages: list[Message]) -> list[tuple[str, bool]]:
        if self.template == "chat":
            return self._chat_segments(messages)
        return self._vicuna_segments(messages)

    def _sample_segments(self, messages: list[Message], sample_id: str) -> list[tuple[str, bool]]:
        try:
            return self.segments(messages)
        except DataError as err:
            if err.sample_id is None:  # template errors do not know the sample: name it here
                raise DataError(err.detail, sample_id, err.kind) from err
            raise

    # --- tokenisation ---------------------------------------------------------------------------
    def _tokenize(self, segs: list[tuple[str, bool]]) -> Encoded:
        ids: list[int] = []
        labels: list[int] = []
        if self.template == "vicuna_v1" and self.tokenizer.bos_token_id is not None:
            ids, labels = [self.tokenizer.bos_token_id], [IGNORE]
        for text, trainable in segs:
            if not text:
                continue
            piece = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if trainable else [IGNORE] * len(piece)
        return Encoded(ids, labels)

    def encode(self, sample: Sample) -> Encoded:
        """All turns; labels on assistant content and its end-of-turn token only."""
        return self._tokenize(self._sample_segments(self._messages(sample), sample.id))

    def encode_prompt(self, sample: Sample) -> list[int]:
        """Everything before the final assistant answer, ending with the assistant header:
        the input for ``generate()`` or for scoring answer options."""
        msgs = self._messages(sample)
        last = max(i for i, m in enumerate(msgs) if m.role == "assistant")
        segs = self._sample_segments(msgs[:last] + [Message("assistant", "x")], sample.id)
        return self._tokenize(segs[:-1]).input_ids

    def end_of_turn_id(self) -> int | None:
        """The special token that closes an assistant turn in this template (vicuna_v1: eos;
        LLaMA-3: ``<|eot_id|>``; Qwen2: ``<|im_end|>``): the first special token after the content."""
        tok = self.tokenizer
        special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
        return next((i for i in self.encode_answer("x") if i in special), None)

    def stop_token_ids(self, eos_token_id: int | Sequence[int] | None) -> list[int]:
        """Ids that end a generated answer: the LLM's generation-config eos id(s), then this
        template's end-of-turn token (chat LLMs end turns with it, not with their eos)."""
        ids = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        return list(dict.fromkeys([*ids, *filter(lambda i: i is not None, [self.end_of_turn_id()])]))

    def encode_answer(self, answer: str) -> list[int]:
        """Token ids of an assistant answer as they follow ``encode_prompt`` (with end token)."""
        sample = Sample("answer", [Message("user", "q"), Message("assistant", answer)])
        enc = self.encode(sample)
        return [t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE]
