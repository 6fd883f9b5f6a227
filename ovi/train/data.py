"""Synthetic audio-visual clips for the trained tiny model (DESIGN §5's vocabulary).

One object (colour x shape) on a grey background moves left / right / up / down at constant speed or
bounces on the floor; the soundtrack is a steady tone (low / middle / high) plus, for bounces, a click at
every floor contact. Everything is drawn analytically from a `ClipSpec`, so a clip is a pure function of
its spec (and a spec a pure function of a seed), which makes data, held-out sets and metrics reproducible.

Long sequences: a spec defines its clip for any global frame, not only 0..16, so "what comes next" is
defined for continuation windows (ovi.pipeline.windows): a linear motion keeps its speed and wraps around
(the object leaves one side of the frame and comes back on the other, drawn on both sides while it
crosses, so "moves left" stays true for any length), a bounce repeats every BOUNCE_PERIOD frames with a
click at every contact, the tone holds. Window 0 of a sequence is exactly the 17-frame clip.
`sequence_window` cuts window w of a sequence the way the engine lays windows out (`windows.layout`).

Tones and clicks are built on the audio codec's grid (whole cycles per 512-sample latent frame, see
`ovi.codecs.shapes.ShapesAudioCodec`), so the codec represents them exactly: low = 218.75 Hz, middle =
437.5 Hz, high = 875 Hz (the checks take the nearest of 220 / 440 / 880 Hz).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass, replace

import numpy as np

COLORS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0)}
BACKGROUND = (0.5, 0.5, 0.5)  # mid grey: none of the four colours, and 0 in the [-1, 1] pixel range
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "bounce")
STEPS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # (dx, dy) per frame of speed, y down
LINEAR_MOTIONS = tuple(STEPS)
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

# Bounces: one floor contact, always at frame 8 (a click at audio latent 10, 7.68 frames). A contact frame
# drawn from 6-10 was tried first: after 2,500 steps the model drew bounces but put the clicks at random
# times (no click within 1 frame of a contact), i.e. it had not learned to time audio by video. With one
# timing both streams learn it; the sync figure then says the two agree, not that one follows the other.
BOUNCE_CONTACT = 8.0
BOUNCE_PERIOD = 16.0

# A square's half-width as a fraction of `size` (a circle's radius). 0.9 gave both nearly the same area, so
# after 8x8 pooling a square differed from a circle by 0.19 of the clip's latent norm (less than a 4 px
# shift) and the model drew one round blob for both (square prompts: box fill 0.81, circles 0.79). At 1.0
# the square fills its corner cells: 0.32 of the norm apart, and the codec's fill gap widens.
SQUARE_HALF_WIDTH = 1.0

# Object half-width (a circle's radius) range in pixels: 28-32 px objects, 3.5-4 cells of the 8x8-pooling
# codec. Bigger objects were tried for shapes (issue 18; experiments/shape_diagnosis.py `codec` and the
# bigger_* rows of experiments/results/shape_diagnosis.jsonl): through the codec, one 3x3 binomial blur of
# the cells (about how soft the model draws) turns every square at half-width 15 into a circle, at 21 none.
# A fine-tune at 20-22 then drew every triangle right, over long clips too, but squares as circles of a
# square's area, and with equal areas (SQUARE_HALF_WIDTH 0.886) as plain circles: the model had learnt a
# square as more mass, not corners, so the world stayed at this size.
OBJECT_SIZE = (14.0, 16.0)

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

    @property
    def combo(self) -> tuple[str, str, str, str]:
        """(colour, shape, motion, pitch): the words that make it a training or held-out combination."""
        return self.color, self.shape, self.motion, self.pitch

    def to_dict(self) -> dict:
        return asdict(self)


def sample_spec(combo: tuple[str, str, str, str], rng: random.Random) -> ClipSpec:
    """Placement for one (colour, shape, motion, pitch) combination, with a little jitter.

    Linear motions cross more than half the frame (67-77 px in 16 frames, so the direction is unmistakable
    after 8x8-pixel pooling) from near one edge, the other coordinate near the middle; bounces stand near
    the middle with their floor contact at frame 8 (BOUNCE_CONTACT) so the fall and the rise both show.
    A prompt names no position, so a narrow placement costs nothing, and it gives the model a sharp
    target from pure noise: runs with objects placed anywhere (or anywhere in the middle third) had
    learned no direction from the prompt after 1,000-1,250 steps, while a two-clip run with fixed
    placement learned it in 750.
    """
    color, shape, motion, pitch = combo
    size = rng.uniform(*OBJECT_SIZE)
    margin = size + 2.0
    speed = rng.uniform(4.2, 4.8)
    start = margin + rng.uniform(0.0, 4.0)      # distance of the start from the edge it leaves
    cross = 64.0 + rng.uniform(-4.0, 4.0)
    x0 = y0 = 0.0
    if motion == "right":
        x0, y0 = start, cross
    elif motion == "left":
        x0, y0 = WIDTH - start, cross
    elif motion == "down":
        x0, y0 = cross, start
    elif motion == "up":
        x0, y0 = cross, HEIGHT - start
    else:
        x0 = 64.0 + rng.uniform(-6.0, 6.0)
    return ClipSpec(color=color, shape=shape, motion=motion, pitch=pitch, size=size, x0=x0, y0=y0, speed=speed,
                    period=BOUNCE_PERIOD, contact=BOUNCE_CONTACT, height=rng.uniform(55.0, 65.0),
                    caption_variant=rng.randint(0, 1))


def floor_y(spec: ClipSpec) -> float:
    return HEIGHT - spec.size - 2.0


def track(spec: ClipSpec, frames=None) -> np.ndarray:
    """[F, 2] object centre (x, y) per frame, y pointing down; `frames`: global frame indices (default the
    clip's 0..NUM_FRAMES-1). Linear motions wrap around: x mod WIDTH, y mod HEIGHT."""
    t = np.arange(NUM_FRAMES, dtype=np.float64) if frames is None else np.asarray(frames, dtype=np.float64)
    if spec.motion == "bounce":
        y = floor_y(spec) - spec.height * np.abs(np.sin(np.pi * (t - spec.contact) / spec.period))
        return np.stack([np.full_like(t, spec.x0), y], 1)
    dx, dy = STEPS[spec.motion]
    return np.stack([np.mod(spec.x0 + dx * spec.speed * t, WIDTH), np.mod(spec.y0 + dy * spec.speed * t, HEIGHT)], 1)


def contact_frames(spec: ClipSpec, start: int = 0, count: int = NUM_FRAMES) -> list[int]:
    """Frames (integers, inside the clip) where a bouncing object touches the floor; with `start` /
    `count`: global frames in [start, start + count)."""
    if spec.motion != "bounce":
        return []
    out, k = [], math.ceil((start - spec.contact) / spec.period)
    while spec.contact + k * spec.period <= start + count - 1:
        c = spec.contact + k * spec.period
        if c >= start and abs(c - round(c)) < 1e-6:
            out.append(int(round(c)))
        k += 1
    return out


def _mask(shape: str, cx: float, cy: float, size: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] (1-px soft edge) of one shape centred at (cx, cy)."""
    if shape == "circle":
        d = np.hypot(xx - cx, yy - cy) - size
    elif shape == "square":
        d = np.maximum(np.abs(xx - cx), np.abs(yy - cy)) - size * SQUARE_HALF_WIDTH
    else:  # upright isosceles triangle: apex up, base down
        top, bottom = cy - size, cy + size
        half = (yy - top) / (2 * size) * size  # half-width grows from 0 at the apex to size at the base
        d = np.maximum(np.maximum(top - yy, yy - bottom), np.abs(xx - cx) - half)
    return np.clip(0.5 - d, 0.0, 1.0)


def _wrapped_mask(shape: str, cx: float, cy: float, size: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Coverage of the object on a wrap-around frame: drawn again one frame width / height over where it
    crosses an edge (an object away from the edges gets exactly `_mask`)."""
    m = _mask(shape, cx, cy, size, yy, xx)
    reach = size + 1.0
    for ox in (-WIDTH, 0, WIDTH):
        for oy in (-HEIGHT, 0, HEIGHT):
            if (ox or oy) and -reach < cx + ox < WIDTH + reach and -reach < cy + oy < HEIGHT + reach:
                m = np.maximum(m, _mask(shape, cx + ox, cy + oy, size, yy, xx))
    return m


def render_video(spec: ClipSpec, colors: dict[str, tuple[float, float, float]] = COLORS,
                 frames=None) -> np.ndarray:
    """float32 [3, F, HEIGHT, WIDTH] in [-1, 1] (F = NUM_FRAMES, or the global `frames` given). `colors`
    names the RGB of `spec.color` (another palette draws colours the model never saw, e.g. for a LoRA
    that teaches one)."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64) + 0.5
    bg = np.asarray(BACKGROUND)[:, None, None]
    fg = np.asarray(colors[spec.color])[:, None, None]
    out = []
    for cx, cy in track(spec, frames):
        m = _wrapped_mask(spec.shape, cx, cy, spec.size, yy, xx)[None]
        out.append(bg * (1 - m) + fg * m)
    video = np.stack(out, 1) * 2.0 - 1.0
    return video.astype(np.float32)


def audio_token_of_frame(frame: float) -> int:
    """The audio latent (32 ms) whose start is nearest a video frame's time."""
    return int(round(frame / FPS * SAMPLE_RATE / SAMPLES_PER_LATENT))


def click_latent_frames(spec: ClipSpec, start_token: int = 0, tokens: int = AUDIO_LATENTS) -> list[int]:
    """Audio latent frames (32 ms each) whose start is nearest each contact frame's time; with
    `start_token` / `tokens`: global contacts that land in [start_token, start_token + tokens), counted
    from start_token."""
    if start_token == 0 and tokens == AUDIO_LATENTS:
        return [audio_token_of_frame(c) for c in contact_frames(spec)]
    first = int(math.floor(start_token * SAMPLES_PER_LATENT / SAMPLE_RATE * FPS)) - 2
    last = int(math.ceil((start_token + tokens) * SAMPLES_PER_LATENT / SAMPLE_RATE * FPS)) + 2
    out = []
    for c in contact_frames(spec, max(0, first), last - max(0, first) + 1):
        k = audio_token_of_frame(c) - start_token
        if 0 <= k < tokens:
            out.append(k)
    return out


def render_audio(spec: ClipSpec, codec_cycles: tuple[int, ...], start_token: int = 0) -> np.ndarray:
    """float32 [NUM_SAMPLES]: the tone as a phase-0 cosine on the codec grid, clicks as one in-phase burst of
    all the codec's tones at the start of a latent frame (so both round-trip through the codec exactly).
    `start_token`: the window starting at that global audio latent (the tone is the same in every latent;
    clicks fall at the global contacts)."""
    n = np.arange(NUM_SAMPLES, dtype=np.float64)
    wave = TONE_AMPLITUDE * np.cos(2 * np.pi * PITCH_CYCLES[spec.pitch] * n / SAMPLES_PER_LATENT)
    local = np.arange(SAMPLES_PER_LATENT, dtype=np.float64)
    burst = CLICK_AMPLITUDE * sum(np.cos(2 * np.pi * k * local / SAMPLES_PER_LATENT) for k in codec_cycles)
    for f in click_latent_frames(spec, start_token):
        if 0 <= f < AUDIO_LATENTS:
            wave[f * SAMPLES_PER_LATENT:(f + 1) * SAMPLES_PER_LATENT] += burst
    return wave.astype(np.float32)


# ---- continuation windows of a long sequence ------------------------------------------------------
VIDEO_LATENT_FRAMES = 1 + (NUM_FRAMES - 1) // 4   # the codecs' temporal factor 4 (causal: 1 + 4 per latent)


def sequence_layout(windows: int):
    """The engine's own window layout (ovi.pipeline.windows.layout) of a `windows`-window clip at this
    data's rates: where each window starts and how many video frames / audio tokens it carries clean."""
    from ovi.pipeline.windows import DEFAULT_OVERLAP, layout
    frames = NUM_FRAMES + (windows - 1) * 4 * (VIDEO_LATENT_FRAMES - DEFAULT_OVERLAP)
    return layout(frames / FPS, window_video_frames=VIDEO_LATENT_FRAMES, window_audio_tokens=AUDIO_LATENTS,
                  fps=FPS, audio_tokens_per_second=SAMPLE_RATE / SAMPLES_PER_LATENT)


@dataclass(frozen=True)
class SequenceWindow:
    """Window `window` of a spec's long sequence, cut as the engine lays it out."""
    render_frames: tuple[int, ...]  # global pixel frames to render and encode (1 + 4 per latent frame)
    drop_first_latent: bool         # the first encoded latent only pads the causal codec's frame 0: drop it
    audio_start: int                # global audio latent of the window's first token
    video_prefix: int               # latent frames carried clean from the window before
    audio_prefix: int               # audio latents carried clean


def sequence_window(window: int) -> SequenceWindow:
    """Window 0 is the plain clip (frames 0..16, no prefix). Window w >= 1 starts at global latent frame
    s = video_starts[w]: its first latent is the previous window's last one (pixel frames 4s-3..4s, one per
    channel group, as the engine carries it), then 4 new frames per latent. Encoding frames 4s-4..4s+16
    and dropping the first latent gives exactly that."""
    if window == 0:
        return SequenceWindow(tuple(range(NUM_FRAMES)), False, 0, 0, 0)
    lay = sequence_layout(window + 1)
    s = lay.video_starts[window]
    return SequenceWindow(tuple(range(4 * s - 4, 4 * (s + VIDEO_LATENT_FRAMES - 1) + 1)), True,
                          lay.audio_starts[window], lay.video_prefix[window], lay.audio_prefix[window])


def turned_spec(spec: ClipSpec, window: int, motion: str) -> ClipSpec:
    """The same object, tone and speed moving `motion` from where `spec` is at the last carried frame of
    window `window` (global pixel frame 4s): what follows when a clip is extended with another direction's
    prompt (the ball turns). Linear motions only."""
    if spec.motion not in LINEAR_MOTIONS or motion not in LINEAR_MOTIONS:
        raise ValueError(f"a turn goes from one linear motion to another, not {spec.motion} -> {motion}")
    seam = sequence_window(window).render_frames[4]  # the carried latent's last pixel frame
    (x, y), = track(spec, [seam])
    dx, dy = STEPS[motion]
    return replace(spec, motion=motion, x0=float(np.mod(x - dx * spec.speed * seam, WIDTH)),
                   y0=float(np.mod(y - dy * spec.speed * seam, HEIGHT)))


# The shape each shape is contrasted with in shape-twin training (ovi.train.train `shape_twin_frac`): square
# and circle differ only in their corner cells after pooling, the pair the model confuses; a triangle's twin
# is a square.
SHAPE_TWINS = {"square": "circle", "circle": "square", "triangle": "square"}


def shape_twin(spec: ClipSpec) -> ClipSpec | None:
    """The same clip (placement, motion, tone, caption form) with its twin shape (SHAPE_TWINS), or None
    when that combination is held out (a twin never trains on the bench's held-out combinations)."""
    twin = replace(spec, shape=SHAPE_TWINS[spec.shape])
    return None if twin.combo in HELD_OUT else twin


def encode_window(spec: ClipSpec, window: int, video_codec, audio_codec, turn: str | None = None):
    """Window `window` of `spec`'s sequence through the codecs -> (video content latents [12, 5, h, w],
    audio latents [22, C], video prefix frames, audio prefix tokens). `turn`: from the carried frames on,
    the object moves that way instead (`turned_spec`; the caller trains it with that motion's prompt)."""
    import torch
    cut = sequence_window(window)
    video = render_video(spec, frames=cut.render_frames)
    if turn is not None:  # the carried frames (the first 5 rendered) stay; the new ones follow the turn
        video[:, 5:] = render_video(turned_spec(spec, window, turn), frames=cut.render_frames[5:])
    content = video_codec.encode_content(torch.from_numpy(video))
    if cut.drop_first_latent:
        content = content[:, 1:]
    audio = audio_codec.encode(torch.from_numpy(render_audio(spec, audio_codec.CYCLES, cut.audio_start)))
    return content, audio, cut.video_prefix, cut.audio_prefix


def held_out_specs(per_combo: int = 1, seed: int = 1234) -> list[ClipSpec]:
    rng = random.Random(seed)
    return [sample_spec(combo, rng) for combo in HELD_OUT for _ in range(per_combo)]


def parse_prompt(prompt: str) -> dict[str, str]:
    """What a prompt in this vocabulary asks for: {color, motion, pitch} (the keys it names)."""
    words = re.findall(r"[a-z]+", prompt.lower())
    out = {}
    for key, names in (("color", COLORS), ("pitch", PITCHES)):
        found = [w for w in words if w in names]
        if found:
            out[key] = found[0]
    if any(w in ("bounces", "bouncing", "bounce") for w in words):
        out["motion"] = "bounce"
    else:
        found = [w for w in words if w in ("left", "right", "up", "down")]
        if found:
            out["motion"] = found[0]
    return out


# ---- words -----------------------------------------------------------------------------------------
NEGATIVE_WORDS = "jitter bad hands blur distortion robotic muffled echo distorted ,".split()


def vocabulary() -> list[str]:
    """The trained tiny model's word vocabulary (its tokenizer ships it in the checkpoint): specials, the
    prompt tags, every caption word, the default negative prompts' words, and a few words people type
    ("ball", "to the left"); anything else reads as <unk>."""
    words = ["<AUDCAP>", "<ENDAUDCAP>", "<S>", "<E>", "a", "an", "the", "moves", "move", "moving", "bounces",
             "bouncing", "bounce", "tone", "and", "clicks", "click", "to", "of", "on", "floor", "ball", "."]
    words += list(COLORS) + list(SHAPES) + ["left", "right", "up", "down"] + list(PITCHES) + NEGATIVE_WORDS
    out = ["<pad>", "</s>", "<unk>"]
    for w in words:
        if w not in out:
            out.append(w)
    return out


def measure_color_stats(n: int = 2000, seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-colour mean and std of 8x8-pooled training frames: the shapes codec's normalisation."""
    import torch
    import torch.nn.functional as F
    rng = random.Random(seed)
    combos = training_combinations()
    pooled = []
    for _ in range(n):
        v = torch.from_numpy(render_video(sample_spec(rng.choice(combos), rng)))
        pooled.append(F.avg_pool2d(v.transpose(0, 1), 8).transpose(0, 1).reshape(3, -1))
    allv = torch.cat(pooled, 1)
    return tuple(float(m) for m in allv.mean(1)), tuple(float(s) for s in allv.std(1))
