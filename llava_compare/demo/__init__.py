"""The demo's machinery around a training run, plugged in through the training core's hooks
(``train/hooks.py``; ``configs/train.yaml`` lists :class:`hooks.DemoHooks`): ``synth_data``
(``data.synth``: the synthetic set generated before the model), ``replay`` (``data.replay``: the
base LLM's own answers mixed into stage 2; ``eval.chat_prompts`` answered before training),
``calibration`` (a compressor's one-time input statistics / output scale) and ``user_report``
(``eval.mode=generate``: the report the demo prints at the end).

Each does nothing unless its config key asks for it. Imports ``train`` (the hook interface,
config paths), ``eval``, ``model``, ``data`` and ``synth``; nothing in ``train`` imports it.
"""
