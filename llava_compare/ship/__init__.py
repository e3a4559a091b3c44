"""Shipping a trained model: the ``export`` command and what it writes, and the hub upload.

* ``export``      -- the ``llava-compare export`` command: stage output / checkpoint -> model folder.
* ``remote_code`` -- standalone ``*_llava_compare.py`` files generated from the package sources.
* ``hub``         -- token check and upload of an export folder.

Neighbours: loads models through ``llava_compare.loading``; imports ``model`` and ``data``;
nothing below imports ``ship``.
"""
