"""Data: from dataset rows to model inputs.

* ``sample``      -- the canonical ``Sample`` / ``Message`` and ``DataError``.
* ``formats``     -- source specs and readers (files, folders, hub datasets); ``rows`` parses one row
  (LLaVA, Mantis, mPLUG-Owl layouts, dataset image markers).
* ``checks``      -- every per-sample check (roles, text, placeholders, images); ``problems`` counts them.
* ``conversation``-- templates, ``Image k:`` markers, label masks; ``processor`` -- tokenizer + image
  processor, image-token expansion.
* ``dataset``     -- token budget, skip-and-count; ``collator`` -- padding and packing;
  ``feature_cache`` -- stage-1 ViT features; ``pipeline`` -- config -> conversation builder.

Neighbours: the bottom layer; imports nothing else of ``llava_compare``. ``model`` builds on it
(the processor), ``synth`` writes data for it, everything above reads through it.
"""
