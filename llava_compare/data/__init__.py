"""Data: from dataset rows to model inputs.

* ``sample``      -- the canonical ``Sample`` / ``Message`` and ``DataError``.
* ``formats``     -- source specs and readers (files, folders, hub datasets); ``rows`` parses one row
  (LLaVA, Mantis, mPLUG-Owl layouts, dataset image markers); ``table`` -- training rows kept in
  Arrow, parsed on access; ``mixture`` -- weight / repeat / sampling; ``streaming`` -- the
  ``data.streaming`` IterableDataset with its resumable position.
* ``checks``      -- every per-sample check (roles, text, placeholders, images); ``problems`` counts them.
* ``conversation``-- templates, ``Image k:`` markers, label masks; ``processor`` -- tokenizer + image
  processor, image-token expansion.
* ``dataset``     -- token budget, skip-and-count; ``collator`` -- batching and packing;
  ``padding`` -- the one padder (collator, processor, eval);
  ``feature_cache`` -- stage-1 ViT features; ``pipeline`` -- config -> conversation builder.

Neighbours: the bottom layer; imports nothing else of ``llava_compare``. ``model`` builds on it
(the processor), ``synth`` writes data for it, everything above reads through it.
"""
