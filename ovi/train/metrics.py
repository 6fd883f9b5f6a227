"""Analytic measurements of a clip (no model involved): object colour, shape, motion, travel, tone pitch,
bounce sync.

Works on what a user gets (uint8 frames [F, H, W, 3] and a float waveform), so the same code scores the
training data (the ceiling), untrained weights (the floor) and the trained model.

Objects may wrap around the frame (long clips: ovi.train.data): the centroid of an object split across
an edge is taken on the torus, and the track is unwrapped over time, so a left move stays a left move.
Shape: per frame where the object touches no edge, three mask features (fill of its bounding box, and
the width of its top third over its bottom third); a triangle is narrow on top, a square fills its box, a
circle fills ~pi/4 of it. The thresholds sit in the gaps measured on the data after the codec round
trip (8x8 pooling blurs corners): fill square 0.91-0.95 / circle 0.75-0.81; top/bottom width triangle
0.32-0.55 / circle and square 0.89-1.15 (90 clips; `tests/train/test_shape_and_sequences.py` rechecks it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ovi.train.data import BACKGROUND, COLORS, FPS, PITCHES, SAMPLE_RATE, SAMPLES_PER_LATENT

FG_THRESHOLD = 0.25       # max |pixel - background| over RGB (0..1 scale) for a pixel to be "object"
MIN_PIXELS = 20           # fewer object pixels than this in a frame: no centroid for that frame
MIN_TRAVEL = 16.0         # px; a linear move shorter than this counts as "static"
TRIANGLE_TOP_RATIO = 0.75  # top-third / bottom-third width below this: a triangle (apex up)
SQUARE_FILL = 0.86         # bounding-box fill above this: a square; below it a circle
BOUNCE_DEPTH = 12.0       # px the track must fall and then rise around one frame to be a bounce
CLICK_RATIO = 6.0         # a frame is a click when its transient power exceeds ratio x the clip's median ...
CLICK_FLOOR = 0.002       # ... and this floor (a data click: 20 tones of 0.025 -> ~0.01 outside the tone bins)


@dataclass
class Measurement:
    color: str | None
    motion: str | None
    pitch: str | None
    contacts: list[int] = field(default_factory=list)     # video frames of floor contacts
    clicks: list[float] = field(default_factory=list)     # click times, in video frames
    track: list[list[float]] = field(default_factory=list)
    peak_hz: float | None = None
    shape: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def object_mask(video: np.ndarray) -> np.ndarray:
    """[F, H, W] bool: pixels that differ from the background."""
    v = video.astype(np.float32) / 255.0
    return np.abs(v - np.asarray(BACKGROUND, np.float32)).max(-1) > FG_THRESHOLD


def measure_color(video: np.ndarray, mask: np.ndarray, colors: dict = COLORS) -> str | None:
    """The palette colour nearest the object's mean colour (`colors`: name -> RGB in 0..1)."""
    if mask.sum() < MIN_PIXELS:
        return None
    mean = (video.astype(np.float32) / 255.0)[mask].mean(0)
    names = list(colors)
    return names[int(np.argmin([np.linalg.norm(mean - np.asarray(colors[n])) for n in names]))]


def _wrapped_mean(coords: np.ndarray, touches_both_ends: bool, period: int) -> float:
    """Mean of pixel coordinates on a circle of `period` px: an object cut by the edge (touching both
    ends) has its low half moved one period up first, then the mean is taken back into [0, period)."""
    if not touches_both_ends:
        return float(coords.mean())
    return float(np.where(coords < period / 2, coords + period, coords).mean() % period)


def centroid_track(mask: np.ndarray) -> np.ndarray:
    """[F, 2] (x, y) pixel centroid per frame (NaN where the frame has too few object pixels), unwrapped
    over time: an object that leaves one side and comes back on the other keeps a continuous track."""
    f, h, w = mask.shape
    out = np.full((f, 2), np.nan)
    for i in range(f):
        m = mask[i]
        if m.sum() >= MIN_PIXELS:
            ys, xs = np.nonzero(m)
            out[i] = [_wrapped_mean(xs + 0.5, m[:, 0].any() and m[:, -1].any(), w),
                      _wrapped_mean(ys + 0.5, m[0].any() and m[-1].any(), h)]
    ok = ~np.isnan(out[:, 0])
    if ok.sum() > 1:
        out[ok, 0] = np.unwrap(out[ok, 0], period=w)
        out[ok, 1] = np.unwrap(out[ok, 1], period=h)
    return out


def shape_features(mask: np.ndarray) -> tuple[float, float] | None:
    """(bounding-box fill, top-third / bottom-third width): medians over the frames whose object touches
    no edge of the frame; None when there is none."""
    feats = []
    for m in mask:
        if m.sum() < MIN_PIXELS or m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any():
            continue
        ys, xs = np.nonzero(m)
        height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        third = max(1, height // 3)
        top = m[ys.min(): ys.min() + third].sum(1).mean()
        bottom = m[ys.max() + 1 - third: ys.max() + 1].sum(1).mean()
        feats.append((m.sum() / (height * width), top / max(bottom, 1.0)))
    if not feats:
        return None
    fill, ratio = np.median(np.asarray(feats), axis=0)
    return float(fill), float(ratio)


def measure_shape(mask: np.ndarray) -> str | None:
    """circle / square / triangle from the object mask [F, H, W] (None: no whole object in any frame)."""
    feats = shape_features(mask)
    if feats is None:
        return None
    fill, ratio = feats
    if ratio < TRIANGLE_TOP_RATIO:
        return "triangle"
    return "square" if fill > SQUARE_FILL else "circle"


def travel(track: np.ndarray, motion: str) -> float | None:
    """Pixels a linear motion covers over the track's span along its axis (fitted slope x span, signed
    so the asked direction is positive); None for bounces or a track too short to fit."""
    if motion not in ("left", "right", "up", "down"):
        return None
    ok = ~np.isnan(track[:, 0])
    if ok.sum() < 3:
        return None
    t = np.nonzero(ok)[0].astype(np.float64)
    axis, sign = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}[motion]
    return float(sign * np.polyfit(t, track[ok, axis], 1)[0] * (t[-1] - t[0]))


def bounce_contacts(y: np.ndarray) -> list[int]:
    """Interior frames where y (down is +) is a local maximum that the track falls >= BOUNCE_DEPTH to and
    rises >= BOUNCE_DEPTH from: floor contacts."""
    out = []
    for t in range(1, len(y) - 1):
        if np.isnan(y[t]):
            continue
        before, after = y[:t], y[t + 1:]
        if np.all(np.isnan(before)) or np.all(np.isnan(after)):
            continue
        if y[t] >= np.nanmax(y[max(0, t - 2): t + 3]) and \
                y[t] - np.nanmin(before) >= BOUNCE_DEPTH and y[t] - np.nanmin(after) >= BOUNCE_DEPTH:
            out.append(t)
    return out


def classify_motion(track: np.ndarray) -> tuple[str | None, list[int]]:
    ok = ~np.isnan(track[:, 0])
    if ok.sum() < 3:
        return None, []
    contacts = bounce_contacts(track[:, 1])
    if contacts:
        return "bounce", contacts
    t = np.nonzero(ok)[0].astype(np.float64)
    slope_x = np.polyfit(t, track[ok, 0], 1)[0]
    slope_y = np.polyfit(t, track[ok, 1], 1)[0]
    span = t[-1] - t[0]
    if max(abs(slope_x), abs(slope_y)) * span < MIN_TRAVEL:
        return "static", []
    if abs(slope_x) >= abs(slope_y):
        return ("right" if slope_x > 0 else "left"), []
    return ("down" if slope_y > 0 else "up"), []


def frame_spectra(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = SAMPLES_PER_LATENT
    frames = audio[: len(audio) // n * n].reshape(-1, n)
    return np.abs(np.fft.rfft(frames, axis=1)) / (n / 2), np.fft.rfftfreq(n, 1 / SAMPLE_RATE)


def measure_pitch(audio: np.ndarray) -> tuple[str | None, float | None]:
    """Dominant frequency of the whole clip (150-1500 Hz) -> the nearest of the three tones."""
    spec = np.abs(np.fft.rfft(audio.astype(np.float64)))
    freqs = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
    band = (freqs >= 150) & (freqs <= 1500)
    if not band.any() or spec[band].max() <= 1e-6 * len(audio):
        return None, None
    peak = float(freqs[band][np.argmax(spec[band])])
    names = list(PITCHES)
    return names[int(np.argmin([abs(np.log(peak / PITCHES[n])) for n in names]))], peak


def measure_clicks(audio: np.ndarray) -> list[float]:
    """Click onsets in video frames. Per 512-sample frame, the spectral power above each frequency bin's
    median over the clip, summed over the bins away from the three tones (+-1 bin of 220 / 440 / 880 Hz
    and of the clip's two strongest bins): steady tones cancel, tones that swell or fade are left out, a
    click (a broadband transient) remains. Frames whose excess stands out count as clicks; a run of them
    counts once."""
    mags, freqs = frame_spectra(audio)
    if len(mags) < 3:
        return []
    power = mags ** 2
    bin_hz = freqs[1]
    tone_bins = {int(round(f / bin_hz)) for f in PITCHES.values()} | set(np.argsort(power.sum(0))[-2:].tolist())
    keep = np.ones(power.shape[1], bool)
    for b in tone_bins:
        keep[max(0, b - 1): b + 2] = False
    excess = np.clip(power - np.median(power, axis=0, keepdims=True), 0, None)[:, keep].sum(1)
    hot = (excess > CLICK_RATIO * np.median(excess)) & (excess > CLICK_FLOOR)
    clicks, prev = [], False
    for i, h in enumerate(hot):
        if h and not prev:
            clicks.append(i * SAMPLES_PER_LATENT / SAMPLE_RATE * FPS)
        prev = h
    return clicks


def measure(video: np.ndarray, audio: np.ndarray, colors: dict = COLORS) -> Measurement:
    mask = object_mask(video)
    track = centroid_track(mask)
    motion, contacts = classify_motion(track)
    pitch, peak = measure_pitch(audio)
    return Measurement(color=measure_color(video, mask, colors), motion=motion, pitch=pitch, contacts=contacts,
                       clicks=measure_clicks(audio), track=np.round(track, 2).tolist(), peak_hz=peak,
                       shape=measure_shape(mask))


def sync_error(m: Measurement, num_frames: int) -> float:
    """Mean |contact frame - nearest click| in frames over the measured contacts; a bounce with no
    contact or no click scores the clip length (the worst possible)."""
    if not m.contacts or not m.clicks:
        return float(num_frames)
    return float(np.mean([min(abs(c - k) for k in m.clicks) for c in m.contacts]))


def score(pairs, num_frames: int) -> dict:
    """Accuracies over (spec, Measurement) pairs; travel over the linear motions; sync over the bounces
    (see sync_error): what `ovi bench quality` reports and what training evaluates."""
    n = len(pairs)
    out = {f"{k}_accuracy": sum(getattr(m, k) == getattr(s, k) for s, m in pairs) / n
           for k in ("color", "shape", "motion", "pitch")}
    moved = [travel(np.asarray(m.track, dtype=np.float64), s.motion) for s, m in pairs if s.motion != "bounce"]
    # travel: the share of the data's distance (speed x frames) a linear motion covers, mean over those clips
    ratios = [d / (s.speed * (num_frames - 1)) for (s, _), d in
              zip([p for p in pairs if p[0].motion != "bounce"], moved) if d is not None]
    out["travel_ratio"] = float(np.mean(ratios)) if ratios else None
    bounces = [sync_error(m, num_frames) for s, m in pairs if s.motion == "bounce"]
    out["sync_error_frames"] = float(np.mean(bounces)) if bounces else None
    out["n_clips"] = n
    out["n_bounces"] = len(bounces)
    return out
