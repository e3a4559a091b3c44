"""``python -m llava_compare.synth OUT --train N --eval N`` (same as ``llava-compare synth``)."""

from .generator import main

if __name__ == "__main__":
    raise SystemExit(main())
