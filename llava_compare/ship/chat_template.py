"""The chat template an export carries: a Jinja template reproducing the training prompt
(``ConversationBuilder``'s vicuna_v1 format with ``Image k:`` markers), or the LLM's own template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..data.sample import IMAGE_PLACEHOLDER
from ..loading import builder_for


def _jinja_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)


def vicuna_chat_template(tokenizer: Any, marker_template: str | None, system: str,
                         bos: bool | None = None) -> str:
    """A Jinja chat template rendering exactly what ``ConversationBuilder`` (vicuna_v1) builds.

    Content may be a string with ``<image>`` placeholders or a list of ``{"type": "image"}`` /
    ``{"type": "text", "text": ...}`` items (joined with newlines, as ``question_sample`` does);
    the k-th image of the dialogue gets the training marker (``Image k: ``). The BOS token is
    written only when the tokenizer does not add it itself, so both ``processor(text=...)`` and
    ``apply_chat_template(tokenize=True)`` give one BOS.
    """
    if bos is None:
        adds = tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id]
        bos = tokenizer.bos_token_id is not None and not adds
    if marker_template:
        pre, _, post = marker_template.partition("{k}")
        pre, post = (s.replace("{{", "{").replace("}}", "}") for s in (pre, post))
        marker = f"{_jinja_str(pre)} ~ ns.k ~ {_jinja_str(post)}" if "{k}" in marker_template else _jinja_str(pre)
    else:
        marker = "''"
    img = _jinja_str(IMAGE_PLACEHOLDER)
    return "\n".join([
        "{%- set ns = namespace(k=0, text='', system=" + _jinja_str(system) + ", found=false, out="
        + (_jinja_str(tokenizer.bos_token) if bos else "''") + ", pending='') -%}",
        # the first system message replaces the default system prompt (wherever it stands)
        "{%- for message in messages -%}{%- if message['role'] == 'system' and not ns.found -%}"
        "{%- set ns.found = true -%}{%- if message['content'] is string -%}{%- set ns.system = message['content'] -%}"
        "{%- else -%}{%- set ns.system = message['content'] | selectattr('type', 'equalto', 'text') "
        "| map(attribute='text') | join('\\n') -%}{%- endif -%}{%- endif -%}{%- endfor -%}",
        "{%- set ns.pending = ns.system -%}",
        "{%- for message in messages -%}{%- if message['role'] != 'system' -%}",
        "{%- set ns.text = '' -%}",
        "{%- if message['content'] is string -%}",
        "{%- for part in message['content'].split(" + img + ") -%}",
        "{%- if not loop.first -%}{%- set ns.k = ns.k + 1 -%}{%- set ns.text = ns.text ~ " + marker + " ~ " + img
        + " -%}{%- endif -%}{%- set ns.text = ns.text ~ part -%}{%- endfor -%}",
        "{%- else -%}{%- for item in message['content'] -%}",
        "{%- if not loop.first -%}{%- set ns.text = ns.text ~ '\\n' -%}{%- endif -%}",
        "{%- if item['type'] == 'image' -%}{%- set ns.k = ns.k + 1 -%}{%- set ns.text = ns.text ~ " + marker
        + " ~ " + img + " -%}",
        "{%- elif item['type'] == 'text' -%}{%- set ns.text = ns.text ~ item['text'] -%}{%- endif -%}",
        "{%- endfor -%}{%- endif -%}",
        "{%- if message['role'] == 'user' -%}",
        "{%- set ns.pending = ns.pending ~ (' ' if ns.pending else '') ~ 'USER: ' ~ ns.text -%}",
        "{%- if not loop.last or add_generation_prompt -%}",
        "{%- set ns.pending = ns.pending ~ ' ASSISTANT:' -%}{%- endif -%}",
        "{%- elif message['role'] == 'assistant' -%}",
        "{%- set ns.out = ns.out ~ ns.pending ~ ' ' ~ ns.text ~ " + _jinja_str(tokenizer.eos_token or "") + " -%}",
        "{%- set ns.pending = '' -%}{%- endif -%}",
        "{%- endif -%}{%- endfor -%}",
        "{{- ns.out ~ ns.pending -}}",
    ])


def chat_template_for(stage_dir: str | Path, processor: Any) -> str | None:
    """The chat template matching how the stage formatted its training prompts."""
    from ..data.conversation import VICUNA_SYSTEM

    builder = builder_for(stage_dir, processor)
    if builder.template == "chat":  # the LLM's own template: content is a string with markers
        return processor.tokenizer.chat_template
    system = VICUNA_SYSTEM if builder.system is None else builder.system
    return vicuna_chat_template(processor.tokenizer, builder.marker_template, system)
