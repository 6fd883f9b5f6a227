"""`ovi bench long`: long clips of the trained tiny model, three ways, measured across windows and seams.

For each held-out (colour, shape, motion, pitch) combination (ovi.train.data.HELD_OUT) and each window
count of `--windows`, one clip of that many windows is made by each method, all through the Engine's own
stages (text encoding, `denoise`, the codecs), with the same seeds (window w: `window_seed(seed, w)`):

- `ours`: continuation windows carrying a clean video + audio latent prefix (ovi.pipeline.windows), the
  whole latent sequence decoded once;
- `independent`: the same windows with no prefix (each from its own noise), stitched at the same places;
- `last_frame`: Wan2GP's way: each window is an i2v clip from the previous window's last *decoded* frame,
  audio unconditioned; windows decoded one by one and joined in pixels (the conditioning frame dropped).

One JSON line per (method, windows), pinned fields: `method`, `windows`, `duration_s`,
`direction_accuracy_per_window` (list: per window, the share of clips whose motion there is the prompt's),
`color_accuracy` / `pitch_accuracy` / `shape_accuracy` (over every window of every clip; shape:
ovi.train.metrics.measure_shape), `seam_jump_ratio` (mean centroid jump across a seam / median
centroid step within the windows), `audio_seam_db` (mean |level step| in dB between the 512-sample audio
frames at a seam, beside `audio_step_db_within`, the same over every other frame boundary),
`bounce_sync_frames` (mean contact-to-click offset in frames per window of the bounce prompts, null when
there are none), `seconds` (mean generation seconds per clip). A contact sheet of the frames on either side
of every seam (the first SHEET_CLIPS clips, half size) goes to `--out-dir`. With `--extend-turn`, one more
row (`kind: "extend_turn"`): each linear-motion clip
extended by one window whose prompt names the opposite direction: `turn_accuracy`, `color_held`, `pitch_held`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

METHODS = ("ours", "independent", "last_frame")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="yaml config (default: the embedded trained tiny model)")
    parser.add_argument("--windows", default="3,6", help="comma-separated window counts (default 3,6)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    parser.add_argument("--limit", type=int, default=None, help="only the first N held-out combinations")
    parser.add_argument("--seed", type=int, default=0, help="seed of every clip (default 0)")
    parser.add_argument("--out-dir", default="experiments/results/long",
                        help="where the seam contact sheets go ('' for none)")
    parser.add_argument("--extend-turn", action="store_true",
                        help="also extend each linear-motion clip with the opposite direction's prompt")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")


# ---- the clips -------------------------------------------------------------------------------------------

def duration_for(spec, windows: int, overlap: int = 1) -> float:
    """Seconds whose continuation layout has exactly `windows` windows."""
    frames = spec.num_frames + (windows - 1) * 4 * (spec.video_latent_frames - overlap)
    return frames / spec.fps


def generate_long(engine, prompt: str, seed: int, windows: int, method: str) -> tuple[np.ndarray, np.ndarray, list]:
    """-> (uint8 video [F, H, W, 3], audio, seam frames) of a `windows`-window clip made by `method`."""
    from ovi.pipeline.windows import denoise_windows, window_seed

    duration = duration_for(engine.spec, windows)
    if method == "ours":
        clip = engine.generate(prompt, seed=seed, duration=duration)
        return clip.video, clip.audio, clip.meta["windows"]["seams_frames"]
    if method == "independent":
        plan = engine.plan(prompt, seed=seed, duration=duration)
        contexts = engine.encode_text(plan)
        video, audio = denoise_windows(engine, plan, contexts, carry=False)
        frames, wave = engine.decode(plan, video, audio)
        return frames, wave, plan.windows.seams
    if method == "last_frame":
        videos, waves, seams = [], [], []
        image = None
        per_frame = engine.spec.sample_rate / engine.spec.fps
        for w in range(windows):
            fields = {"seed": window_seed(seed, w)}
            if image is not None:
                fields.update(mode="i2v", image=image)
            clip = engine.generate(prompt, **fields)
            keep = 0 if w == 0 else 1  # a later window's frame 0 is the conditioning frame: drop it
            if w:
                seams.append(sum(len(v) for v in videos))
            videos.append(clip.video[keep:])
            start = int(round(keep * per_frame))
            waves.append(clip.audio[start: start + int(round(len(clip.video[keep:]) * per_frame))])
            image = clip.video[-1]  # the last decoded frame, as the next window's i2v image
        return np.concatenate(videos), np.concatenate(waves), seams
    raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")


# ---- the measurements ---------------------------------------------------------------------------------

def segments(num_frames: int, seams: list[int]) -> list[tuple[int, int]]:
    """[start, end) pixel frames of each window's new content."""
    edges = [0, *seams, num_frames]
    return list(zip(edges[:-1], edges[1:]))


def seam_jump_ratio(track: np.ndarray, seams: list[int]) -> float | None:
    """Mean centroid jump across the seams / median centroid step elsewhere (1 = a seam is an ordinary
    frame step); None when the object is not found on both sides of any seam."""
    steps = np.linalg.norm(np.diff(track, axis=0), axis=1)  # steps[t] = frame t -> t + 1
    at_seam = [steps[s - 1] for s in seams if 0 < s < len(track) and np.isfinite(steps[s - 1])]
    inside = np.delete(steps, [s - 1 for s in seams if 0 < s < len(track)])
    inside = inside[np.isfinite(inside)]
    if not at_seam or not len(inside):
        return None
    return float(np.mean(at_seam) / max(np.median(inside), 1e-6))


def level_steps_db(audio: np.ndarray, samples_per_frame: int) -> np.ndarray:
    """|dB step| between consecutive audio frames: steps[k] = frame k -> k + 1."""
    n = len(audio) // samples_per_frame
    rms = np.sqrt(np.mean(audio[: n * samples_per_frame].reshape(n, -1).astype(np.float64) ** 2, axis=1))
    db = 20 * np.log10(np.maximum(rms, 1e-5))
    return np.abs(np.diff(db))


def audio_seam_db(audio: np.ndarray, seams: list[int], fps: float, sample_rate: int,
                  samples_per_frame: int = 512) -> tuple[float | None, float | None]:
    """(mean level step at the seams, median level step at every other frame boundary), in dB."""
    steps = level_steps_db(audio, samples_per_frame)
    at = sorted({int(round(s / fps * sample_rate / samples_per_frame)) - 1 for s in seams})
    at = [k for k in at if 0 <= k < len(steps)]
    if not at:
        return None, None
    inside = np.delete(steps, at)
    return float(np.mean(steps[at])), (float(np.median(inside)) if len(inside) else None)


def measure_long(spec, video: np.ndarray, audio: np.ndarray, seams: list[int], fps: float, sample_rate: int) -> dict:
    """One long clip against its prompt's spec: per-window motion / colour / pitch / sync, and the seams."""
    from ovi.train.metrics import centroid_track, measure, object_mask, sync_error

    per_window = []
    for start, end in segments(len(video), seams):
        a0, a1 = int(round(start / fps * sample_rate)), int(round(end / fps * sample_rate))
        m = measure(video[start:end], audio[a0:a1])
        per_window.append({"motion": m.motion == spec.motion, "color": m.color == spec.color,
                           "pitch": m.pitch == spec.pitch, "shape": m.shape == spec.shape,
                           "sync": sync_error(m, end - start) if spec.motion == "bounce" else None})
    track = centroid_track(object_mask(video))
    seam_db, within_db = audio_seam_db(audio, seams, fps, sample_rate)
    return {"windows": per_window, "seam_jump_ratio": seam_jump_ratio(track, seams),
            "audio_seam_db": seam_db, "audio_step_db_within": within_db}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarize(rows: list[dict], windows: int) -> dict:
    """Per-clip measurements of one (method, windows) -> the pinned fields."""
    per_window = [[r["windows"][w] for r in rows] for w in range(windows)]
    flat = [x for col in per_window for x in col]
    return {
        "direction_accuracy_per_window": [float(np.mean([x["motion"] for x in col])) for col in per_window],
        "color_accuracy": float(np.mean([x["color"] for x in flat])),
        "pitch_accuracy": float(np.mean([x["pitch"] for x in flat])),
        "shape_accuracy": float(np.mean([x["shape"] for x in flat])),
        "seam_jump_ratio": _mean(r["seam_jump_ratio"] for r in rows),
        "audio_seam_db": _mean(r["audio_seam_db"] for r in rows),
        "audio_step_db_within": _mean(r["audio_step_db_within"] for r in rows),
        "bounce_sync_frames": _mean(x["sync"] for x in flat),
        "n_clips": len(rows),
    }


SHEET_CLIPS = 6   # clips per seam contact sheet: enough to see the seams, small enough to keep in git
SHEET_SCALE = 2   # every 2nd pixel: 64x64 frames


def seam_sheet(out_dir, name: str, rows: list[tuple[str, np.ndarray, list[int]]]) -> str | None:
    """The last frame before and the first frame after every seam, per clip (the first SHEET_CLIPS), at
    half size, side by side (ovi.train.report.contact_sheet)."""
    if not out_dir:
        return None
    from ovi.train.report import contact_sheet
    picked = []
    for label, video, seams in rows[:SHEET_CLIPS]:
        idx = [i for s in seams for i in range(s - 1, s + 1) if 0 <= i < len(video)]
        picked.append((label, video[idx][:, ::SHEET_SCALE, ::SHEET_SCALE]))
    return str(contact_sheet(picked, Path(out_dir) / f"{name}_seams.png", frame_step=1))


OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def extend_turn(engine, specs, seed: int, out_dir=None) -> dict:
    """`--extend` with a new prompt: each held-out linear-motion clip is made, saved with its latents, and
    extended by one window whose prompt names the opposite direction (`ovi generate --extend` runs the same
    request). Measured on the extension: direction is the new prompt's, colour and tone held."""
    import tempfile

    from ovi.train.metrics import measure
    turned, color, pitch, pics = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, spec in enumerate(s for s in specs if s.motion in OPPOSITE):
            first = engine.generate(spec.prompt, seed=seed)
            paths = first.save(Path(tmp) / f"clip{i}", save_latents=True)
            prompt = spec.prompt.replace(f"moves {spec.motion}", f"moves {OPPOSITE[spec.motion]}")
            longer = engine.generate(prompt, extend=str(paths["mp4"]))
            (seam,) = longer.meta["windows"]["seams_frames"]
            rate = longer.sample_rate / longer.fps
            m = measure(longer.video[seam:], longer.audio[int(round(seam * rate)): int(round(len(longer.video) * rate))])
            turned.append(m.motion == OPPOSITE[spec.motion])
            color.append(m.color == spec.color)
            pitch.append(m.pitch == spec.pitch)
            pics.append((f"{spec.motion} -> {OPPOSITE[spec.motion]}", longer.video, [seam]))
    return {"kind": "extend_turn", "turn_accuracy": float(np.mean(turned)), "color_held": float(np.mean(color)),
            "pitch_held": float(np.mean(pitch)), "n_clips": len(turned),
            "seam_contact_sheet": seam_sheet(out_dir, "extend_turn", pics)}


def run(args):
    import ovi
    from ovi.bench.quality import counts_option, trained_engine
    from ovi.config import parse_set_option
    from ovi.errors import InputError
    from ovi.train import data

    cfg = ovi.load_config(args.config, **dict(parse_set_option(s) for s in args.set))
    counts = counts_option("windows", args.windows, "window counts", 2, "3,6")
    methods = [m.strip() for m in str(args.methods).split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise InputError(f"--methods {args.methods!r}: choose from {', '.join(METHODS)}")
    engine = trained_engine(cfg, "long")
    specs = data.held_out_specs()[: args.limit]
    spec = engine.spec
    for windows in counts:
        for method in methods:
            rows, seconds, pics = [], [], []
            for clip_spec in specs:
                t0 = time.perf_counter()
                video, audio, seams = generate_long(engine, clip_spec.prompt, args.seed, windows, method)
                seconds.append(time.perf_counter() - t0)
                rows.append(measure_long(clip_spec, video, audio, seams, spec.fps, spec.sample_rate))
                pics.append((f"{method}: {clip_spec.prompt.split('.')[0]}", video, seams))
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
            yield {"bench": "long", "config": args.config or "tiny (embedded default)", "world_size": 1,
                   "model_name": cfg.model_name, "method": method, "windows": windows,
                   "duration_s": round(len(video) / spec.fps, 4), "steps": cfg.sample_steps, "seed": args.seed,
                   "held_out_combinations": len(specs), **summarize(rows, windows),
                   "seconds": float(np.mean(seconds)),
                   "seam_contact_sheet": seam_sheet(args.out_dir, f"{method}_{windows}w", pics)}
    if args.extend_turn:
        t0 = time.perf_counter()
        row = extend_turn(engine, specs, args.seed, args.out_dir)
        yield {"bench": "long", "config": args.config or "tiny (embedded default)", "world_size": 1,
               "model_name": cfg.model_name, "method": "ours", "windows": 2, "steps": cfg.sample_steps,
               "seed": args.seed, **row, "seconds": (time.perf_counter() - t0) / max(1, row["n_clips"])}
