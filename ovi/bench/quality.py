"""`ovi bench quality`: does the trained tiny model follow its prompt? Analytic checks on generated clips.

For every held-out (colour, shape, motion, pitch) combination of `ovi.train.data.HELD_OUT` (never trained
on) and `--seeds` seeds, the clip is generated through the real Engine and measured (ovi.train.metrics):
the object's colour (mean colour of the non-background pixels, nearest of the four), its motion
(centroid track: left/right/up/down, or bounce when it falls and rises again), the tone (dominant
frequency, nearest of 220/440/880 Hz) and, for bounces, the offset in frames between each floor contact
and the nearest click. One JSON line per measured point:

- `weights: "data"`: the training data itself (ceiling), rendered, and `"data+codec"` after the codec
  round trip;
- `weights: "untrained"`: the same architecture at its training init (floor), at the default step count;
- `weights: "trained"`: the configured weights at each of `--steps`;
- `kind: "default_clip"`: the config's own prompt at its step count, with its generation seconds.

A config's LoRA set and Lightning profile apply to the trained rows (`--set "lora=[a.safetensors]"`,
`--set lightning=true`); those rows record the sampler that ran (solver, shift, guidance, `lightning`),
the `loras` (name, weight, merged) and `denoise_seconds`, so a distilled few-step LoRA is compared with
the full-step model from the same command.

It also writes a contact sheet (frames 0, 4, 8, 12, 16 of each clip) and a spectrogram strip per row
under `--out-dir`, so a person can look rather than read.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

DEFAULT_STEPS = "1,2,4,8,16,32"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="yaml config (default: the embedded trained tiny model)")
    parser.add_argument("--steps", default=DEFAULT_STEPS, help=f"comma-separated step counts (default {DEFAULT_STEPS})")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per held-out combination (default 2)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N held-out combinations")
    parser.add_argument("--no-floor", action="store_true", help="skip the untrained-weights row")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the training-data rows")
    parser.add_argument("--out-dir", default="experiments/results/quality",
                        help="where the contact sheets and spectrogram strips go ('' for none)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")


def label(spec, m) -> str:
    got = f"{m.color or '-'} {m.motion or '-'} {m.pitch or '-'}"
    return f"{spec.color} {spec.shape} {spec.motion} {spec.pitch} -> {got}"


def pictures(out_dir, name: str, rows: list[tuple[str, np.ndarray, np.ndarray]]) -> dict:
    if not out_dir:
        return {}
    from ovi.train.report import contact_sheet, spectrogram_strip
    out = Path(out_dir)
    sheet = contact_sheet([(label, video) for label, video, _ in rows], out / f"{name}_contact_sheet.png")
    strip = spectrogram_strip([(label, audio) for label, _, audio in rows], out / f"{name}_spectrograms.png")
    return {"contact_sheet": str(sheet), "spectrograms": str(strip)}


def untrained_engine(engine, seed: int = 0):
    """An Engine with the same config and codecs, and the architecture at its training init (upstream's
    init: zero output heads) plus a freshly initialised text encoder: the floor."""
    from ovi.codecs.text import T5TextEncoder, make_t5
    from ovi.model import FusionModel
    from ovi.model.configs import architecture
    from ovi.pipeline.components import Components
    from ovi.pipeline.engine import Engine
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = FusionModel(*architecture(engine.config.model))
        model.init_weights()
        t5 = make_t5(engine.config.model)
    finally:
        torch.random.set_rng_state(state)
    c = engine.components
    comps = Components(T5TextEncoder(t5.eval(), c.text_encoder.tokenizer), model.eval().to(engine.device),
                       c.video_codec, c.audio_codec, c.checkpoint, c.storage_dtype)
    return Engine(engine.config, comps, engine.device, engine.dtype)


def sampler_used(rows) -> dict:
    """What the clips of `rows` ([(spec, measurement, clip)]) were sampled with, from their sidecars."""
    meta = rows[0][2].meta
    return {"solver": meta["solver"], "shift": meta["shift"], "video_guidance_scale": meta["video_guidance_scale"],
            "audio_guidance_scale": meta["audio_guidance_scale"], "lightning": meta["lightning"] is not None,
            "loras": [{k: r[k] for k in ("name", "weight", "merged")} for r in meta["loras"]],
            "denoise_seconds": float(np.mean([c.meta["timings"]["denoise"] for _, _, c in rows])),
            "forwards": float(np.mean([c.meta["forwards"] for _, _, c in rows]))}  # per clip, that really ran


def measure_engine(engine, specs, seeds: int, steps: int):
    """Generate every (spec, seed) clip at `steps`; returns [(spec, measurement, clip)], mean seconds."""
    from ovi.train.metrics import measure
    out, seconds = [], []
    for spec in specs:
        for seed in range(seeds):
            t0 = time.perf_counter()
            clip = engine.generate(spec.prompt, seed=seed, steps=steps)
            seconds.append(time.perf_counter() - t0)
            out.append((spec, measure(clip.video, clip.audio), clip))
    return out, float(np.mean(seconds))


def counts_option(option: str, text, noun: str, minimum: int, example: str) -> list[int]:
    """A bench option's comma-separated counts (`--steps 1,8`, `--windows 3,6`), each >= `minimum`."""
    from ovi.errors import InputError
    try:
        counts = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--{option} {text!r}: give comma-separated integers, e.g. {example}") from None
    if not counts or min(counts) < minimum:
        raise InputError(f"--{option} {text!r}: give comma-separated {noun} >= {minimum}, e.g. {example}")
    return counts


def trained_engine(cfg, bench: str):
    """An Engine for `cfg`, refused unless its model draws the trained tiny model's vocabulary (what the
    quality and long benches score)."""
    import ovi
    from ovi.errors import InputError
    engine = ovi.Engine.from_config(cfg)
    if not hasattr(engine.components.video_codec, "encode_content"):
        raise InputError(f"ovi bench {bench} measures the trained tiny model (model_name tiny_trained, the "
                         f"embedded default); config model_name {cfg.model_name!r} does not generate its "
                         "synthetic vocabulary")
    return engine


def run(args):
    import ovi
    from ovi.config import parse_set_option
    from ovi.errors import InputError
    from ovi.pipeline.images import to_uint8_frames
    from ovi.train import data
    from ovi.train.metrics import measure, score

    cfg = ovi.load_config(args.config, **dict(parse_set_option(s) for s in args.set))
    step_counts = counts_option("steps", args.steps, "step counts", 1, DEFAULT_STEPS)
    if args.seeds < 1:
        raise InputError("--seeds must be at least 1")
    engine = trained_engine(cfg, "quality")
    specs = data.held_out_specs()[: args.limit]
    base = {"bench": "quality", "config": args.config or "tiny (embedded default)", "world_size": 1,
            "model_name": cfg.model_name, "solver": cfg.solver_name, "shift": cfg.shift,
            "video_guidance_scale": cfg.video_guidance_scale, "audio_guidance_scale": cfg.audio_guidance_scale,
            "slg_layer": cfg.slg_layer, "seeds": args.seeds, "held_out_combinations": len(specs),
            "quantize": engine.memory_settings.quantize,  # one GPU: int8/fp8 weights (memory_profiles)
            "compile": cfg.compile, "step_cache": cfg.step_cache, "step_cache_threshold": engine.step_cache.threshold}
    nf = engine.spec.num_frames

    if not args.no_ceiling:
        vc, ac = engine.components.video_codec, engine.components.audio_codec
        truth = data.held_out_specs(per_combo=args.seeds)[: len(specs) * args.seeds]
        raw, coded, pics = [], [], []
        for spec in truth:
            v = torch.from_numpy(data.render_video(spec))
            a = torch.from_numpy(data.render_audio(spec, ac.CYCLES))
            raw.append((spec, measure(to_uint8_frames(v), a.numpy())))
            vr, ar = to_uint8_frames(vc.decode(vc.encode(v))), ac.decode(ac.encode(a)).numpy()
            coded.append((spec, m := measure(vr, ar)))
            pics.append((label(spec, m), vr, ar))
        yield {**base, "weights": "data", "steps": None, **score(raw, nf)}
        yield {**base, "weights": "data+codec", "steps": None, **score(coded, nf), **pictures(args.out_dir, "data", pics)}

    if not args.no_floor:
        floor = untrained_engine(engine)
        rows, sec = measure_engine(floor, specs, args.seeds, cfg.sample_steps)
        pics = [(label(s, m), c.video, c.audio) for s, m, c in rows]
        yield {**base, "weights": "untrained", "steps": cfg.sample_steps, "clip_seconds": sec,
               **score([(s, m) for s, m, _ in rows], nf), **pictures(args.out_dir, "untrained", pics)}

    for steps in step_counts:
        rows, sec = measure_engine(engine, specs, args.seeds, steps)
        pics = [(label(s, m), c.video, c.audio) for s, m, c in rows]
        name = f"trained_steps{steps}" + ("_lightning" if cfg.lightning else "") + "".join(
            f"_{Path(str(entry['path'])).stem}" for entry in cfg.lora)
        yield {**base, "weights": "trained", "steps": steps, "clip_seconds": sec, **sampler_used(rows),
               **score([(s, m) for s, m, _ in rows], nf), **pictures(args.out_dir, name, pics)}

    # The config's own prompt, as `ovi generate` / `make demo` would make it.
    prompt = cfg.text_prompt
    t0 = time.perf_counter()
    clip = engine.generate(prompt)
    sec = time.perf_counter() - t0
    m = measure(clip.video, clip.audio)
    want = data.parse_prompt(prompt)
    yield {**base, "kind": "default_clip", "weights": "trained", "steps": cfg.sample_steps, "prompt": prompt,
           "clip_seconds": sec, "measured": {"color": m.color, "motion": m.motion, "pitch": m.pitch,
                                             "contacts": m.contacts, "clicks": m.clicks},
           "expected": want, "matches": bool(want) and all(getattr(m, k) == v for k, v in want.items()),
           **pictures(args.out_dir, "default_prompt", [(prompt, clip.video, clip.audio)])}
