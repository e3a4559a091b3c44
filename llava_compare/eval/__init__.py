"""Evaluation: the ``llava-compare eval`` command (``run``) and its parts.

* ``formats``  -- eval readers: ``mcq`` (LLaVA-format multiple choice, the synthetic ``eval.json``),
  ``qbench2`` (Q-Bench2 A1-pair rows), ``micbench`` (3-4 images), ``open`` (free-form answers).
* ``scoring``  -- batched option log-likelihood, batched greedy generation, answer parsing.
* ``metrics``  -- exact match / token F1, the summary (per task, per question type) and its table.
* ``swaps``    -- items scored again with their images in other orders (``--swap-orders``):
  swap consistency and position pick rates.
* ``report``   -- ``results.json``, ``predictions.jsonl``, the self-contained ``report.html``, wandb.
* ``run``      -- the ``llava-compare eval`` command and ``evaluate_run`` (end of training).

Neighbours: loads models through ``loading``, encodes with ``data``; ``train`` calls ``run`` at the
end of a stage. ``ship`` and ``generate`` are its siblings (no imports between them).
"""
