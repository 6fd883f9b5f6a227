"""Synthetic audio-visual clips for the trained tiny model (DESIGN §5's vocabulary).

One object (colour x shape) on a grey background moves left / right / up / down at constant speed or
bounces on the floor; the soundtrack is a steady tone (low / middle / high) plus, for bounces, a click at
every floor contact. Everything is drawn analytically from a `ClipSpec`, so a clip is a pure function of
its spec (and a spec a pure function of a seed), which makes data, held-out sets and metrics reproducible.

Tones and clicks are built on the audio codec's grid (whole cycles per 512-sample latent frame, see
`ovi.train.codecs.ShapesAudioCodec`), so the codec represents them exactly: low = 218.75 Hz, middle =
437.5 Hz, high = 875 Hz (the checks take the nearest of 220 / 440 / 880 Hz).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import numpy as np

COLORS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0)}
BACKGROUND = (0.5, 0.5, 0.5)  # mid grey: none of the four colours, and 0 in the [-1, 1] pixel range
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "bounce")
PITCHES = {"low": 220.0, "middle": 440.0, "high": 880.0}
# Whole cycles per 512-sample frame at 16 kHz (31.25 Hz grid) nearest each nominal pitch.
PITCH_CYCLES = {"low": 7, "middle": 14, "high": 28}

FPS = 24
NUM_FRAMES = 17
HEIGHT = WIDTH = 128
SAMPLE_RATE = 16000
SAMPLES_PER_LATENT = 512
AUDIO_LATENTS = 22
NUM_SAMPLES = AUDIO_LATENTS * SAMPLES_PER_LATENT

TONE_AMPLITUDE = 0.3
CLICK_AMPLITUDE = 0.025  # per codec tone; the 20 in-phase tones sum to a 0.5 peak at the contact

# Held-out (colour, shape, motion, pitch) combinations: never trained on, used by the quality bench.
# Every single word still occurs in training, only these combinations do not. Chosen to cover each
# colour, motion and pitch at least once (bounces twice, for the sync figure).
HELD_OUT = (
    ("red", "triangle", "left", "high"),
    ("green", "circle", "right", "low"),
    ("blue", "square", "up", "middle"),
    ("yellow", "triangle", "down", "low"),
    ("red", "square", "bounce", "middle"),
    ("blue", "circle", "bounce", "high"),
    ("green", "triangle", "up", "high"),
    ("yellow", "square", "right", "middle"),
    ("blue", "triangle", "down", "high"),
    ("green", "square", "left", "middle"),
    ("yellow", "circle", "bounce", "low"),
    ("red", "circle", "down", "low"),
)


def all_combinations() -> list[tuple[str, str, str, str]]:
    return [(c, s, m, p) for c in COLORS for s in SHAPES for m in MOTIONS for p in PITCHES]


def training_combinations() -> list[tuple[str, str, str, str]]:
    held = set(HELD_OUT)
    return [combo for combo in all_combinations() if combo not in held]


def caption(color: str, shape: str, motion: str, pitch: str, variant: int = 0) -> str:
    """Ovi-style prompt: "A blue square moves left. <AUDCAP>a low tone<ENDAUDCAP>".

    Variant 1 mentions the bounce clicks in the audio caption too; both forms are trained so a prompt that
    leaves the clicks out still gets them.
    """
    video = f"A {color} {shape} bounces." if motion == "bounce" else f"A {color} {shape} moves {motion}."
    sound = f"a {pitch} tone"
    if motion == "bounce" and variant == 1:
        sound += " and clicks"
    return f"{video} <AUDCAP>{sound}<ENDAUDCAP>"


@dataclass(frozen=True)
class ClipSpec:
    color: str
    shape: str
    motion: str
    pitch: str
    size: float          # half-width of the object in pixels
    x0: float            # centre at frame 0 (pixels); for bounces x stays
    y0: float
    speed: float         # pixels per frame (linear motions)
    period: float        # bounce: frames between contacts
    contact: float       # bounce: frame of one floor contact
    height: float        # bounce: apex above the floor in pixels
    caption_variant: int = 0

    @property
    def prompt(self) -> str:
        return caption(self.color, self.shape, self.motion, self.pitch, self.caption_variant)

    def to_dict(self) -> dict:
        return asdict(self)


def sample_spec(combo: tuple[str, str, str, str], rng: random.Random) -> ClipSpec:
    """Random placement for one (colour, shape, motion, pitch) combination.

    Linear motions cross about half the frame (64-80 px in 16 frames) so the direction is unmistakable
    even after 8x8-pixel pooling; the perpendicular coordinate is free. Bounces have one contact well
    inside the clip (frames 5-11) so the fall and the rise are both visible.
    """
    color, shape, motion, pitch = combo
    size = rng.uniform(13.0, 17.0)
    margin = size + 2.0
    speed = rng.uniform(4.0, 5.0)
    travel = speed * (NUM_FRAMES - 1)
    lo, hi = margin, WIDTH - margin
    start_lo, start_hi = lo, hi - travel  # where a left-to-right run may start
    cross = rng.uniform(lo, hi)
    x0 = y0 = 0.0
    if motion == "right":
        x0, y0 = rng.uniform(start_lo, start_hi), cross
    elif motion == "left":
        x0, y0 = WIDTH - rng.uniform(start_lo, start_hi), cross
    elif motion == "down":
        x0, y0 = cross, rng.uniform(start_lo, start_hi)
    elif motion == "up":
        x0, y0 = cross, HEIGHT - rng.uniform(start_lo, start_hi)
    else:
        x0 = rng.uniform(lo, hi)
    return ClipSpec(color=color, shape=shape, motion=motion, pitch=pitch, size=size, x0=x0, y0=y0, speed=speed,
                    period=rng.uniform(14.0, 18.0), contact=float(rng.randint(5, 11)),
                    height=rng.uniform(50.0, 70.0), caption_variant=rng.randint(0, 1))


def floor_y(spec: ClipSpec) -> float:
    return HEIGHT - spec.size - 2.0


def track(spec: ClipSpec) -> np.ndarray:
    """[NUM_FRAMES, 2] object centre (x, y) per frame, y pointing down."""
    t = np.arange(NUM_FRAMES, dtype=np.float64)
    if spec.motion == "bounce":
        y = floor_y(spec) - spec.height * np.abs(np.sin(np.pi * (t - spec.contact) / spec.period))
        return np.stack([np.full_like(t, spec.x0), y], 1)
    dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[spec.motion]
    return np.stack([spec.x0 + dx * spec.speed * t, spec.y0 + dy * spec.speed * t], 1)


def contact_frames(spec: ClipSpec) -> list[int]:
    """Frames (integers, inside the clip) where a bouncing object touches the floor."""
    if spec.motion != "bounce":
        return []
    out, k = [], math.ceil((0 - spec.contact) / spec.period)
    while spec.contact + k * spec.period <= NUM_FRAMES - 1:
        c = spec.contact + k * spec.period
        if c >= 0 and abs(c - round(c)) < 1e-6:
            out.append(int(round(c)))
        k += 1
    return out


def _mask(shape: str, cx: float, cy: float, size: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] (1-px soft edge) of one shape centred at (cx, cy)."""
    if shape == "circle":
        d = np.hypot(xx - cx, yy - cy) - size
    elif shape == "square":
        d = np.maximum(np.abs(xx - cx), np.abs(yy - cy)) - size * 0.9
    else:  # upright isosceles triangle: apex up, base down
        top, bottom = cy - size, cy + size
        half = (yy - top) / (2 * size) * size  # half-width grows from 0 at the apex to size at the base
        d = np.maximum(np.maximum(top - yy, yy - bottom), np.abs(xx - cx) - half)
    return np.clip(0.5 - d, 0.0, 1.0)


def render_video(spec: ClipSpec) -> np.ndarray:
    """float32 [3, NUM_FRAMES, HEIGHT, WIDTH] in [-1, 1]."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64) + 0.5
    bg = np.asarray(BACKGROUND)[:, None, None]
    fg = np.asarray(COLORS[spec.color])[:, None, None]
    frames = []
    for cx, cy in track(spec):
        m = _mask(spec.shape, cx, cy, spec.size, yy, xx)[None]
        frames.append(bg * (1 - m) + fg * m)
    video = np.stack(frames, 1) * 2.0 - 1.0
    return video.astype(np.float32)


def click_latent_frames(spec: ClipSpec) -> list[int]:
    """Audio latent frames (32 ms each) whose start is nearest each contact frame's time."""
    return [int(round(c / FPS * SAMPLE_RATE / SAMPLES_PER_LATENT)) for c in contact_frames(spec)]


def render_audio(spec: ClipSpec, codec_cycles: tuple[int, ...]) -> np.ndarray:
    """float32 [NUM_SAMPLES]: the tone as a phase-0 cosine on the codec grid, clicks as one in-phase burst of
    all the codec's tones at the start of a latent frame (so both round-trip through the codec exactly)."""
    n = np.arange(NUM_SAMPLES, dtype=np.float64)
    wave = TONE_AMPLITUDE * np.cos(2 * np.pi * PITCH_CYCLES[spec.pitch] * n / SAMPLES_PER_LATENT)
    local = np.arange(SAMPLES_PER_LATENT, dtype=np.float64)
    burst = CLICK_AMPLITUDE * sum(np.cos(2 * np.pi * k * local / SAMPLES_PER_LATENT) for k in codec_cycles)
    for f in click_latent_frames(spec):
        if 0 <= f < AUDIO_LATENTS:
            wave[f * SAMPLES_PER_LATENT:(f + 1) * SAMPLES_PER_LATENT] += burst
    return wave.astype(np.float32)


def held_out_specs(per_combo: int = 1, seed: int = 1234) -> list[ClipSpec]:
    rng = random.Random(seed)
    return [sample_spec(combo, rng) for combo in HELD_OUT for _ in range(per_combo)]
