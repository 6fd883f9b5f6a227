"""Pictures for people: a contact sheet (frames of each clip, one row per clip) and a spectrogram strip
(one spectrogram per clip), written as PNG with PIL (no plotting library needed at run time)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

FRAME_STEP = 4
LABEL_H = 14


def _label(img: Image.Image, text: str, xy=(2, 1), fill=(255, 255, 255)) -> None:
    ImageDraw.Draw(img).text(xy, text, fill=fill)


def contact_sheet(rows: list[tuple[str, np.ndarray]], path: str | Path, frame_step: int = FRAME_STEP) -> Path:
    """rows: (label, uint8 video [F, H, W, 3]). Each row: frames 0, step, 2*step, ... side by side, with
    the label above them."""
    if not rows:
        raise ValueError("contact_sheet needs at least one clip")
    f, h, w, _ = rows[0][1].shape
    picks = list(range(0, f, frame_step))
    if picks[-1] != f - 1:
        picks.append(f - 1)
    sheet = Image.new("RGB", (len(picks) * (w + 2), len(rows) * (h + LABEL_H + 2)), (20, 20, 20))
    for r, (label, video) in enumerate(rows):
        y = r * (h + LABEL_H + 2)
        _label(sheet, label[:160], (2, y + 1))
        for c, i in enumerate(picks):
            sheet.paste(Image.fromarray(video[min(i, len(video) - 1)]), (c * (w + 2), y + LABEL_H))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def spectrogram(audio: np.ndarray, n_fft: int = 512, hop: int = 128, max_hz: float = 2200.0,
                sample_rate: int = 16000) -> np.ndarray:
    """[freq, time] log-magnitude in [0, 1] (low frequencies at the bottom)."""
    audio = np.asarray(audio, np.float64)
    if len(audio) < n_fft:
        audio = np.pad(audio, (0, n_fft - len(audio)))
    window = np.hanning(n_fft)
    frames = np.stack([audio[i:i + n_fft] * window for i in range(0, len(audio) - n_fft + 1, hop)])
    mag = np.abs(np.fft.rfft(frames, axis=1)).T
    keep = np.fft.rfftfreq(n_fft, 1 / sample_rate) <= max_hz
    db = 20 * np.log10(mag[keep] + 1e-6)
    db = np.clip((db - (db.max() - 60)) / 60, 0, 1)
    return db[::-1]


def _colormap(x: np.ndarray) -> np.ndarray:
    """[..] in [0, 1] -> uint8 RGB, a dark-blue -> yellow ramp."""
    r = np.clip(1.5 * x - 0.2, 0, 1)
    g = np.clip(1.4 * x - 0.4, 0, 1) ** 0.8
    b = np.clip(0.6 - np.abs(x - 0.35) * 1.2, 0, 1) + 0.15 * (1 - x)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def spectrogram_strip(rows: list[tuple[str, np.ndarray]], path: str | Path, height: int = 96,
                      width: int = 256, columns: int = 4, sample_rate: int = 16000) -> Path:
    """rows: (label, float audio). One spectrogram per clip (0-2.2 kHz, low at the bottom), `columns`
    per row, label above each."""
    if not rows:
        raise ValueError("spectrogram_strip needs at least one clip")
    columns = max(1, min(columns, len(rows)))
    cell_w, cell_h = width + 4, height + 2 * LABEL_H + 4
    n_rows = (len(rows) + columns - 1) // columns
    strip = Image.new("RGB", (columns * cell_w, n_rows * cell_h), (20, 20, 20))
    for i, (label, audio) in enumerate(rows):
        img = Image.fromarray(_colormap(spectrogram(audio, sample_rate=sample_rate))).resize((width, height))
        x, y = (i % columns) * cell_w, (i // columns) * cell_h
        strip.paste(img, (x, y + 2 * LABEL_H))
        _label(strip, label[:40], (x + 2, y + 1))
        _label(strip, label[40:80], (x + 2, y + LABEL_H))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    strip.save(path)
    return path
