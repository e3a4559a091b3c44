"""Difficulty knobs, vocabularies (tasks, shapes, colours, backgrounds) and retry limits of the synthetic data."""

from __future__ import annotations

from dataclasses import dataclass


TASKS: tuple[str, ...] = ("brightness", "blur", "count", "change", "sharpest", "brightest", "most")


#: Per multiple-choice task: the image property it compares and the directions it is asked in, each
#: with whether the answer holds the property's highest value. Two-image tasks ask both ways, so a
#: model cannot learn one answer per property; the 3-4-image tasks ask for one extreme.
DIRECTIONS: dict[str, dict[str, bool]] = {
    "brightness": {"brighter": True, "darker": False},
    "blur": {"blurrier": True, "sharper": False},
    "count": {"more": True, "fewer": False},
    "sharpest": {"sharpest": False},
    "brightest": {"brightest": True},
    "most": {"most": True},
}


#: Tasks whose samples hold ``Difficulty.multi_images`` images; the others hold two.
MULTI_IMAGE_TASKS: tuple[str, ...] = ("sharpest", "brightest", "most")


CHANGE_TYPES: tuple[str, ...] = ("colour", "shape", "position")


SHAPES: tuple[str, ...] = ("circle", "square", "triangle")


BACKGROUNDS: tuple[str, ...] = ("stripes", "checker", "noise", "fractal")


# Saturated colours on muted grey backgrounds keep objects easy to tell apart at 64 px.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}


COLOUR_NAMES = tuple(COLOURS)


# Retry limits: a crowded canvas or a (practically impossible) eval/train collision is retried
# with fresh random draws; hitting the limit means the config is unsatisfiable, so fail loudly.
MAX_PLACEMENT_TRIES = 200


MAX_SCENE_TRIES = 50


MAX_COLLISION_TRIES = 20


MIN_IMAGE_SIZE = 32


MAX_OBJECTS = 12  # < len(COLOURS) * len(SHAPES), so unique (colour, shape) sampling terminates


@dataclass(frozen=True)
class Difficulty:
    """Difficulty knobs. Pixel quantities are given at 64 px and scaled with ``image_size / 64``."""

    #: Ratio of the brighter to the darker image's gain in the brightness task.
    brightness_ratio: tuple[float, float] = (1.2, 1.5)
    #: Overall gain (pixel multiplier) range; <= 1 so a brightened image never clips.
    gain_range: tuple[float, float] = (0.45, 1.0)
    #: Gaussian blur radius range for the blur / sharpest tasks and captions.
    blur_radius: tuple[float, float] = (0.0, 2.5)
    #: Minimum radius gap between the sharper and the blurrier image.
    blur_gap: float = 1.0
    #: Max blur where blur is not the question (brightness, count, change): shapes stay readable.
    content_blur_max: float = 1.0
    #: Objects per image (inclusive); the count task needs at least two distinct values.
    object_count: tuple[int, int] = (1, 5)
    #: Object radius range.
    object_radius: tuple[float, float] = (3.5, 7.5)
    #: Number of images a 3-4-image task's sample may have (balanced).
    multi_images: tuple[int, ...] = (3, 4)
    #: Background textures to draw from.
    backgrounds: tuple[str, ...] = BACKGROUNDS
    #: Photograph-like nuisances, so a comparison is learned as a property of the image rather
    #: than of flat synthetic scenes. Background texture contrast (grey levels):
    background_contrast: tuple[float, float] = (15.0, 80.0)
    #: Per-channel colour cast of the background and per-object colour jitter (grey levels).
    colour_cast: float = 35.0
    colour_jitter: float = 30.0
    #: Fine grain of scene texture (relative amplitude), blurred with the scene like real detail.
    grain: tuple[float, float] = (0.0, 0.12)
    #: Strength of a smooth illumination falloff across the scene (0: flat lighting).
    illumination: tuple[float, float] = (0.0, 0.35)
    #: Sensor noise std (grey levels), drawn per sample, added after blur and gain.
    sensor_noise: tuple[float, float] = (0.0, 4.0)

    def __post_init__(self) -> None:
        _check_range("brightness_ratio", self.brightness_ratio, low=1.0, strict_low=True)
        _check_range("gain_range", self.gain_range, low=0.0, strict_low=True, high=1.0)
        _check_range("blur_radius", self.blur_radius, low=0.0)
        _check_range("object_count", self.object_count, low=1)
        _check_range("object_radius", self.object_radius, low=1.0)
        if self.content_blur_max < 0:
            raise ValueError(f"content_blur_max must be >= 0, got {self.content_blur_max}")
        lo, hi = self.blur_radius
        if not 0 < self.blur_gap <= hi - lo:
            raise ValueError(f"blur_gap must be in (0, {hi - lo}] for blur_radius {self.blur_radius}")
        if self.gain_range[0] * self.brightness_ratio[1] > self.gain_range[1]:
            raise ValueError("gain_range is too narrow for brightness_ratio: brightened images would clip")
        if self.object_count[0] == self.object_count[1]:
            raise ValueError("object_count needs two distinct values so the count task has an answer")
        if self.object_count[1] > MAX_OBJECTS:
            # The change task needs a distinct (colour, shape) per object to name it unambiguously.
            raise ValueError(f"object_count high must be <= {MAX_OBJECTS}, got {self.object_count}")
        if not self.multi_images or any(k < 2 for k in self.multi_images):
            raise ValueError(f"multi_images must be non-empty counts >= 2, got {self.multi_images}")
        for name in ("background_contrast", "grain", "illumination", "sensor_noise"):
            _check_range(name, getattr(self, name), low=0.0)
        if self.illumination[1] >= 1:
            raise ValueError(f"illumination must stay below 1 (it darkens by up to that share), got {self.illumination}")
        unknown = sorted(set(self.backgrounds) - set(BACKGROUNDS))
        if unknown or not self.backgrounds:
            raise ValueError(f"unknown backgrounds {unknown}; valid: {', '.join(BACKGROUNDS)}")


def _check_range(
    name: str, value: tuple[float, float], low: float, strict_low: bool = False, high: float | None = None
) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is an ordered pair inside the bounds."""
    if len(value) != 2 or value[0] > value[1]:
        raise ValueError(f"{name} must be an ordered pair (low, high), got {value!r}")
    too_low = value[0] <= low if strict_low else value[0] < low
    if too_low or (high is not None and value[1] > high):
        bound = f"{'>' if strict_low else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        raise ValueError(f"{name} values must be {bound}, got {value!r}")


#: Named looks (``style``): "photo" (the defaults above: texture, casts, uneven light, grain,
#: sensor noise) and "flat" (flat-coloured shapes on hard-edged grey textures, no light falloff,
#: grain or noise), the look the real-weights demo learns within its 300 steps.
STYLES: dict[str, dict[str, object]] = {
    "photo": {},
    "flat": {"object_radius": (4.5, 7.0), "backgrounds": ("stripes", "checker", "noise"),
             "background_contrast": (35.0, 70.0), "colour_cast": 15.0, "colour_jitter": 0.0,
             "grain": (0.0, 0.0), "illumination": (0.0, 0.0), "sensor_noise": (0.0, 0.0)},
}


def difficulty(style: str = "photo") -> Difficulty:
    """The :class:`Difficulty` of a named style (``STYLES``)."""
    if style not in STYLES:
        raise ValueError(f"unknown synth style {style!r}; valid: {', '.join(STYLES)}")
    return Difficulty(**STYLES[style])  # type: ignore[arg-type]


@dataclass(frozen=True)
class Ctx:
    """What every generator function needs besides the RNG."""

    size: int
    cfg: Difficulty

    @property
    def scale(self) -> float:
        return self.size / 64.0
