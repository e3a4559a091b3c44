"""Shipping a trained model: the ``export`` command and what it writes, and the hub upload.

* ``export``        -- the ``llava-compare export`` command: stage output / checkpoint -> model folder.
* ``native``        -- LlavaCompare safetensors + config (``auto_map``) + processor + remote code.
* ``llava_hf``      -- transformers' own ``LlavaForConditionalGeneration`` layout (mlp compressor).
* ``chat_template`` -- the Jinja template reproducing the training prompt.
* ``model_card``    -- README.md: base models, training, eval results, usage.
* ``remote_code``   -- standalone ``*_llava_compare.py`` files generated from the package sources.
* ``hub``           -- token check and upload of an export folder.

Neighbours: loads models through ``loading``; imports ``model`` and ``data``; ``eval`` and
``generate`` are its siblings; only ``cli`` imports it.
"""
