"""Training: ``schema`` + ``config`` (Hydra composition), ``stages`` (what each stage trains),
``trainer`` (the Trainer subclass), ``checkpoints`` + ``run_dir`` (crash-safe checkpoints, resume),
``outputs`` (what a finished stage writes), ``skips`` and ``guards`` (bad data, non-finite loss),
``hooks`` (the points where a recipe adds its own work), ``main`` (the entry point only).

``python -m llava_compare.train recipe=NAME key=value ...``

Neighbours: loads ``init_from`` through ``loading``, builds models with ``model``, reads data with
``data``, evaluates at the end with ``eval``; the config's ``hooks`` bring the rest (the demo's
synthetic data, replay, calibration and report: ``demo``, which imports this package, never the
reverse). Only ``cli``, ``validate`` (which composes training configs) and ``demo`` sit above it.
"""
