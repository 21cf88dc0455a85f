"""The synthetic world: characters, locations and a fast numpy renderer with exact ground truth.

Everything the metrics need is known by construction: a character is four discrete attributes
(shape, colour, pattern, accessory), a location three (props, ground, time of day), and a shot adds
framing, camera move and action. :func:`render_shot` draws a shot as ``[T, H, W, 3]`` uint8 frames,
deterministically from its spec (2x supersampled, then box-filtered, so edges are smooth).

A shot shows one character or a **cast** of up to :data:`MAX_CAST` side by side, left to right in
the order of :attr:`ShotSpec.cast` (the world's convention, which its prompts follow: "Pip and Bo
walk" puts Pip on the left); :func:`character_boxes` says where each one is in every frame.

The attribute vocabularies below are the whole world: the probe, the prompt grammar and the
evaluation all read them from here.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np

# -- vocabularies (order = class index for the probe) -------------------------------------------------
SHAPES = ["round", "square", "triangle"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
PATTERNS = ["plain", "striped", "dotted"]
ACCESSORIES = ["none", "hat", "scarf"]
PROPS = ["forest", "village", "canyon"]  # the location kind names its props: trees, houses, rocks
GROUNDS = ["grass", "sand", "snow", "stone"]
TIMES = ["day", "dusk", "night"]
FRAMINGS = ["wide", "medium", "close"]
CAMERAS = ["static", "pan_left", "pan_right", "zoom_in", "zoom_out"]
ACTIONS = ["walk", "jump", "turn", "wave"]

CHARACTER_ATTRIBUTES = {"shape": SHAPES, "colour": COLOURS, "pattern": PATTERNS, "accessory": ACCESSORIES}
LOCATION_ATTRIBUTES = {"props": PROPS, "ground": GROUNDS, "time": TIMES}
ALL_ATTRIBUTES = {**CHARACTER_ATTRIBUTES, **LOCATION_ATTRIBUTES}

COLOUR_RGB = {
    "red": (215, 40, 40), "green": (40, 170, 60), "blue": (45, 80, 220), "yellow": (240, 215, 40),
    "purple": (140, 55, 190), "orange": (245, 135, 25),
}
GROUND_RGB = {"grass": (95, 150, 70), "sand": (205, 180, 125), "snow": (232, 236, 245), "stone": (120, 118, 122)}
SKY_RGB = {"day": (140, 195, 240), "dusk": (235, 150, 110), "night": (28, 30, 70)}
# Night dims everything that is not the sky; dusk warms it a little.
LIGHT = {"day": (1.0, 1.0, 1.0), "dusk": (1.0, 0.88, 0.78), "night": (0.55, 0.6, 0.8)}
# Characters are lit more gently (a key light), so their colour stays readable at night.
CHARACTER_LIGHT = {"day": (1.0, 1.0, 1.0), "dusk": (1.0, 0.95, 0.9), "night": (0.85, 0.87, 0.95)}
CHARACTER_HEIGHT = {"wide": 0.3, "medium": 0.46, "close": 0.64}  # fraction of the frame height
MAX_CAST = 3  # characters a shot can show side by side
CAST_FITS = {"wide": 3, "medium": 2, "close": 1}  # how many stand side by side in each framing
CAST_SPACING = 1.15  # centre to centre, in character heights
# What the renderer can say each pixel shows (ground truth for region-weighted training losses).
COVERAGE_LAYERS = ("character", "props")


def _labels(record, vocabularies: dict[str, list[str]]) -> dict[str, int]:
    """Class index of each attribute of ``record`` in its vocabulary (the probe's targets)."""
    return {k: v.index(getattr(record, k)) for k, v in vocabularies.items()}


@dataclass(frozen=True)
class Character:
    shape: str
    colour: str
    pattern: str
    accessory: str

    def labels(self) -> dict[str, int]:
        return _labels(self, CHARACTER_ATTRIBUTES)


@dataclass(frozen=True)
class Location:
    props: str
    ground: str
    time: str
    layout_seed: int = 0  # where the props stand: part of the location's identity

    def labels(self) -> dict[str, int]:
        return _labels(self, LOCATION_ATTRIBUTES)


@dataclass(frozen=True)
class ShotSpec:
    character: Character
    location: Location
    framing: str
    camera: str
    action: str
    num_frames: int
    start_x: float = 0.0  # character's world x at frame 0 (continuations start where the last shot ended)
    facing: int = 1  # +1 right, -1 left
    seed: int = 0  # small per-shot jitter (walk speed, jump phase)
    companions: tuple[Character, ...] = ()  # the rest of the cast, to the right of `character`

    def __post_init__(self):
        if 1 + len(self.companions) > CAST_FITS[self.framing]:
            raise ValueError(f"a {self.framing} shot fits {CAST_FITS[self.framing]} character(s) side by side, "
                             f"not {1 + len(self.companions)}")

    @property
    def cast(self) -> tuple[Character, ...]:
        """Every character in the shot, left to right."""
        return (self.character, *self.companions)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["character"], d["location"] = asdict(self.character), asdict(self.location)
        d["companions"] = [asdict(c) for c in self.companions]
        return d

    @staticmethod
    def from_dict(d: dict) -> ShotSpec:
        return ShotSpec(**{**d, "character": Character(**d["character"]), "location": Location(**d["location"]),
                           "companions": tuple(Character(**c) for c in d.get("companions", ()))})

    def end_state(self) -> tuple[float, int]:
        """(world x, facing) at the last frame, for a ``cut: false`` continuation."""
        x, facing, *_ = _pose(self, self.num_frames - 1)
        return x, facing


def random_character(rng: np.random.Generator) -> Character:
    return Character(*(str(rng.choice(v)) for v in CHARACTER_ATTRIBUTES.values()))


def random_location(rng: np.random.Generator, props: str | None = None) -> Location:
    return Location(props or str(rng.choice(PROPS)), str(rng.choice(GROUNDS)), str(rng.choice(TIMES)),
                    int(rng.integers(1 << 30)))


# -- rendering -------------------------------------------------------------------------------------
def _pose(spec: ShotSpec, t: int) -> tuple[float, int, float, float, float]:
    """Character world x, facing, jump height (fraction of body), wave phase, camera zoom at frame t."""
    rng = np.random.default_rng(spec.seed)
    speed = 0.02 + 0.015 * rng.random()
    phase = rng.random() * 2 * np.pi
    n = max(spec.num_frames - 1, 1)
    x, facing, jump, wave = spec.start_x, spec.facing, 0.0, -1.0
    if spec.action == "walk":
        x = spec.start_x + spec.facing * speed * t
    elif spec.action == "jump":
        jump = abs(np.sin(np.pi * t / 6.0 + phase)) * 0.45
    elif spec.action == "turn":
        facing = spec.facing if t < spec.num_frames // 2 else -spec.facing
    elif spec.action == "wave":
        wave = np.sin(2 * np.pi * t / 5.0 + phase)
    zoom = 1.0
    if spec.camera == "zoom_in":
        zoom = 1.0 + 0.35 * t / n
    elif spec.camera == "zoom_out":
        zoom = 1.35 - 0.35 * t / n
    return x, facing, jump, wave, zoom


def _prop_positions(loc: Location) -> np.ndarray:
    rng = np.random.default_rng(loc.layout_seed)
    return np.sort(rng.uniform(-1.5, 1.5, size=7)) + rng.uniform(-0.1, 0.1, size=7)


def _paint(img: np.ndarray, mask: np.ndarray, rgb) -> None:
    """Paint colour ``rgb`` (0-255) over the pixels where the boolean ``mask`` holds. An indexed write, not a
    blend over the whole frame: the renderer's hot spot (3x faster), and the same pixels to the bit."""
    img[mask] = np.asarray(rgb, dtype=np.float32) / 255.0


@functools.lru_cache(maxsize=8)
def _pixel_grid(H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's row and column ``[H, W]`` float32 (shared, read-only: made once per size)."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _box_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over ``k x k`` pixel blocks: ``[H, W, C]`` -> ``[H / k, W / k, C]`` (float32 stays float32, bool
    becomes float64). Sums each block in row-major order, as ``x.reshape(H/k, k, W/k, k, C).mean((1, 3))``
    does (the same result to the bit), without its slow strided reduction."""
    acc = x[0::k, 0::k].astype(np.float32 if x.dtype == np.float32 else np.float64)
    for i in range(k):
        for j in range(k):
            if i or j:
                acc += x[i::k, j::k]
    return acc / (k * k)


def _window(x_lo: float, x_hi: float, y_lo: float, y_hi: float, H: int, W: int) -> tuple[slice, slice] | None:
    """The pixel rows and columns of ``[H, W]`` that the box ``x_lo..x_hi, y_lo..y_hi`` touches (None if
    none). Shapes are drawn inside their box only: the same pixels as over the whole frame, a fraction of
    the work."""
    x0, x1 = max(0, int(np.floor(x_lo))), min(W, int(np.ceil(x_hi)) + 1)
    y0, y1 = max(0, int(np.floor(y_lo))), min(H, int(np.ceil(y_hi)) + 1)
    return (slice(y0, y1), slice(x0, x1)) if x0 < x1 and y0 < y1 else None


def _draw_character(img: np.ndarray, cover: np.ndarray, u: np.ndarray, v: np.ndarray, ch: Character, time: str,
                    facing: int, wave: float, action: str) -> None:
    """Paint ``ch`` onto ``img`` ``[h, w, 3]`` (a view of the frame) and mark its pixels in ``cover`` ``[h, w]``;
    ``u``, ``v`` ``[h, w]`` are each pixel's body coordinates (the body spans about [-1, 1])."""
    if ch.shape == "round":
        body = u ** 2 + v ** 2 < 0.85 ** 2
    elif ch.shape == "square":
        body = (abs(u) < 0.75) & (abs(v) < 0.8)
    else:  # triangle, apex up
        body = (v < 0.85) & (v > -0.95) & (abs(u) < (v + 0.95) * 0.5)
    light = np.asarray(CHARACTER_LIGHT[time], np.float32)
    base = np.asarray(COLOUR_RGB[ch.colour], np.float32) * light
    _paint(img, body, base)
    cover |= body
    if ch.pattern == "striped":
        _paint(img, body & (np.mod(v * 3.2, 1.0) < 0.42) & (v > -0.55), base * 0.35)
    elif ch.pattern == "dotted":
        dots = ((np.mod(u * 2.6 + 0.5, 1.0) - 0.5) ** 2 + (np.mod(v * 2.6 + 0.5, 1.0) - 0.5) ** 2) < 0.2 ** 2
        _paint(img, body & dots & (v > -0.45), np.array((250, 250, 250)) * light)
    # eyes look the way the character faces
    for ex in (-0.22, 0.22):
        ecx, ecy = ex + 0.12 * facing, -0.3
        eye = ((u - ecx) ** 2 + (v - ecy) ** 2) < 0.14 ** 2
        _paint(img, eye, (255, 255, 255))
        cover |= eye
        _paint(img, ((u - ecx - 0.06 * facing) ** 2 + (v - ecy) ** 2) < 0.07 ** 2, (15, 15, 15))
    if ch.accessory == "hat":
        top = -0.85 if ch.shape != "triangle" else -0.95
        hat = ((abs(u) < 0.55) & (v < top) & (v > top - 0.12)) | ((abs(u) < 0.32) & (v < top) & (v > top - 0.6))
        _paint(img, hat, (20, 20, 25))
        cover |= hat
    elif ch.accessory == "scarf":
        _paint(img, body & (v > 0.05) & (v < 0.3), (245, 245, 245))
        tail = (abs(u + 0.35 * facing) < 0.12) & (v > 0.05) & (v < 0.75)
        _paint(img, tail, (245, 245, 245))
        cover |= tail
    if wave > -1.0 or action == "wave":  # an arm raised on the facing side
        ax, ay = 0.9 * facing, -0.2 - 0.35 * wave
        arm = ((u - ax) ** 2 + (v - ay) ** 2) < 0.16 ** 2
        _paint(img, arm, base * 0.8)
        cover |= arm


def render_frame(spec: ShotSpec, t: int, height: int = 64, width: int = 64, supersample: int = 2,
                 return_mask: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """One frame of ``spec`` as ``[H, W, 3]`` uint8; with ``return_mask`` also the coverage of each of
    :data:`COVERAGE_LAYERS` ``[len(COVERAGE_LAYERS), H, W]`` uint8 (0-255: the share of each pixel the
    character, accessories included, or the props cover; the character occludes props)."""
    H, W = height * supersample, width * supersample
    loc = spec.location
    x_char, facing, jump, wave, zoom = _pose(spec, t)
    cam_x = _camera_x(spec, t, x_char)
    scale = H * zoom  # world unit (character height fraction) -> pixels
    yy, xx = _pixel_grid(H, W)
    horizon = H * (0.52 + 0.06 * (zoom - 1.0))

    img = np.empty((H, W, 3), np.float32)
    img[:] = np.asarray(SKY_RGB[loc.time], np.float32) / 255.0
    if loc.time == "night":  # a moon, so night is more than a dark sky
        win = _window(W * 0.74, W * 0.86, H * 0.09, H * 0.21, H, W)
        _paint(img[win], ((xx[win] - W * 0.8) ** 2 + (yy[win] - H * 0.15) ** 2) < (H * 0.06) ** 2, (235, 235, 200))
    light = np.asarray(LIGHT[loc.time], np.float32)
    _paint(img, yy[:, 0] >= horizon, np.asarray(GROUND_RGB[loc.ground]) * light)  # whole rows below the horizon

    # props stand on the horizon, parallax 0.6 relative to the character plane
    props_cover = np.zeros((H, W), bool)
    for px in _prop_positions(loc):
        cx = W / 2 + (px - cam_x * 0.6) * scale * 0.9
        if cx < -0.3 * W or cx > 1.3 * W:
            continue
        s = scale * 0.16
        # every part of a prop lies within cx +- 0.7 s and horizon - 1.45 s .. horizon + 0.5 s
        win = _window(cx - 0.8 * s, cx + 0.8 * s, horizon - 1.5 * s, horizon + 0.6 * s, H, W)
        if win is None:
            continue
        y, x = yy[win], xx[win]
        if loc.props == "forest":
            parts = [((abs(x - cx) < s * 0.12) & (y > horizon - s * 0.9) & (y < horizon + s * 0.1), (110, 70, 40)),
                     (((x - cx) ** 2 + (y - (horizon - s * 1.0)) ** 2) < (s * 0.45) ** 2, (25, 100, 45))]
        elif loc.props == "village":
            roof = (y <= horizon - s * 0.75) & (y > horizon - s * 1.25) & (
                abs(x - cx) < (y - (horizon - s * 1.25)) * 1.0)
            parts = [((abs(x - cx) < s * 0.45) & (y > horizon - s * 0.75) & (y < horizon + s * 0.05), (200, 170, 150)),
                     (roof, (150, 45, 40)),
                     ((abs(x - cx) < s * 0.1) & (y > horizon - s * 0.35) & (y < horizon + s * 0.05), (70, 45, 30))]
        else:  # canyon: rocks
            parts = [((((x - cx) / (s * 0.7)) ** 2 + ((y - horizon) / (s * 0.5)) ** 2) < 1.0, (150, 95, 70))]
        for mask, rgb in parts:
            _paint(img[win], mask, np.array(rgb) * light)
            props_cover[win] |= mask

    # the cast: bodies centred at (bx, by), height bh, side by side in cast order
    cover = np.zeros((H, W), bool)  # the characters' pixels: the bodies plus whatever sticks out of them
    for member, (bx, by, bh) in zip(spec.cast, _body_boxes(spec, x_char, cam_x, jump, scale, H, W), strict=True):
        # every part of a character lies within |u| < 1.06 and -1.55 < v < 0.85 (body coordinates below)
        win = _window(bx - 1.2 * bh / 2, bx + 1.2 * bh / 2, by - 1.7 * bh / 2, by + 1.0 * bh / 2, H, W)
        if win is not None:
            u, v = (xx[win] - bx) / (bh / 2), (yy[win] - by) / (bh / 2)  # body coordinates: the body is [-1, 1]
            _draw_character(img[win], cover[win], u, v, member, loc.time, facing, wave, spec.action)
    out = _box_mean(img, supersample)
    frame = (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
    if not return_mask:
        return frame
    layers = np.stack([cover, props_cover & ~cover], axis=-1)  # [H, W, layer] in COVERAGE_LAYERS order
    coverage = _box_mean(layers, supersample).transpose(2, 0, 1)
    return frame, (coverage * 255 + 0.5).astype(np.uint8)


def _camera_x(spec: ShotSpec, t: int, x_char: float) -> float:
    n = max(spec.num_frames - 1, 1)
    cam_x = x_char if spec.action == "walk" else spec.start_x  # the camera follows a walking character
    if spec.camera == "pan_left":
        cam_x -= 0.35 * t / n
    elif spec.camera == "pan_right":
        cam_x += 0.35 * t / n
    return cam_x


def _body_boxes(spec: ShotSpec, x_char: float, cam_x: float, jump: float, scale: float, H: int, W: int):
    """Each cast member's body centre and height in pixels ``[(bx, by, bh)]``, left to right."""
    bh = CHARACTER_HEIGHT[spec.framing] * scale
    by = H * 0.9 - bh / 2 - jump * bh
    n = len(spec.cast)
    step = CAST_SPACING * CHARACTER_HEIGHT[spec.framing]  # world units
    return [(W / 2 + (x_char + (j - (n - 1) / 2) * step - cam_x) * scale, by, bh) for j in range(n)]


def character_boxes(spec: ShotSpec, t: int, height: int = 64, width: int = 64) -> list[tuple[float, ...] | None]:
    """Where each cast member is at frame ``t`` of a ``height x width`` rendering: ``(x0, y0, x1, y1)`` as
    fractions of the frame (clipped; None when out of view), left to right in cast order."""
    x_char, _, jump, _, zoom = _pose(spec, t)
    out = []
    for bx, by, bh in _body_boxes(spec, x_char, _camera_x(spec, t, x_char), jump, height * zoom, height, width):
        x0, x1 = max(0.0, (bx - 0.53 * bh) / width), min(1.0, (bx + 0.53 * bh) / width)
        y0, y1 = max(0.0, (by - 0.78 * bh) / height), min(1.0, (by + 0.43 * bh) / height)
        out.append((x0, y0, x1, y1) if x1 - x0 > 0.02 and y1 > y0 else None)
    return out


def render_shot(spec: ShotSpec, height: int = 64, width: int = 64) -> np.ndarray:
    """All frames of a shot: ``[T, H, W, 3]`` uint8."""
    return np.stack([render_frame(spec, t, height, width) for t in range(spec.num_frames)])


def render_shot_with_mask(spec: ShotSpec, height: int = 64, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """All frames of a shot ``[T, H, W, 3]`` and their coverage layers ``[T, len(COVERAGE_LAYERS), H, W]``
    (uint8, 0-255; see :func:`render_frame`)."""
    frames, masks = zip(*(render_frame(spec, t, height, width, return_mask=True) for t in range(spec.num_frames)),
                        strict=True)
    return np.stack(frames), np.stack(masks)


def frame_labels(spec: ShotSpec) -> dict[str, int]:
    """Ground-truth class index of every attribute visible in every frame of ``spec`` (the first, leftmost
    character's)."""
    return {**spec.character.labels(), **spec.location.labels()}


def cast_labels(spec: ShotSpec) -> np.ndarray:
    """``[MAX_CAST, len(CHARACTER_ATTRIBUTES)]``: each slot's character attributes left to right, -1 for
    an empty slot."""
    out = np.full((MAX_CAST, len(CHARACTER_ATTRIBUTES)), -1, dtype=np.int64)
    for j, member in enumerate(spec.cast):
        out[j] = list(member.labels().values())
    return out
