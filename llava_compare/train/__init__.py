"""Training: ``schema`` + ``config`` (Hydra composition), ``stages`` (what each stage trains),
``trainer`` (the Trainer subclass), ``checkpoints`` + ``run_dir`` (crash-safe checkpoints, resume),
``outputs`` (what a finished stage writes), ``skips`` and ``guards`` (bad data, non-finite loss),
``main`` (the entry point only).

``python -m llava_compare.train recipe=NAME key=value ...``

Neighbours: loads ``init_from`` through ``loading``, builds models with ``model``, reads data with
``data`` (and ``synth`` for the demo recipes), evaluates at the end with ``eval``. Only ``cli`` and
``validate`` (which composes training configs) sit above it.
"""
