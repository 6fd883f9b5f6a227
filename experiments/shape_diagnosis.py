"""Where does the trained tiny model lose squares? Three probes (issue 18), one JSON line per row appended to
experiments/results/shape_diagnosis.jsonl.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/shape_diagnosis.py x0 [--ckpt-dir DIR] [--label NAME] \
        [--blur 0,0.5,1]
    OMP_NUM_THREADS=1 .venv/bin/python experiments/shape_diagnosis.py sampling [--ckpt-dir DIR] \
        [--settings '[{"shift": 2.0}, {"video_guidance_scale": 2.0}]'] [--steps 8,16] [--label NAME] \
        [--held-out-seeds 6] [--long-windows 3 --long-seeds 2]
    OMP_NUM_THREADS=1 .venv/bin/python experiments/shape_diagnosis.py negative [--ckpt-dir DIR] [--clips 24]
    OMP_NUM_THREADS=1 .venv/bin/python experiments/shape_diagnosis.py trajectory [--ckpt-dir DIR] [--steps 8,16]
    OMP_NUM_THREADS=1 .venv/bin/python experiments/shape_diagnosis.py codec [--sizes 15,19,21,23] [--blur 0,0.5,1]

1. `x0`: a training clip's clean latent (squares, and circles at the same places) noised to σ, and the
   model's one-step x0 prediction decoded: its box fill (ovi.train.metrics.shape_features) from the
   conditional pass, the negative-prompt pass and the guided mix. The data's squares fill 0.91-0.95 after
   the codec, circles 0.75-0.81 (threshold 0.86): a denoiser that rounds corners shows it here, before any
   sampler is involved. `--blur β`: the clean clip is first moved β of the way to its 3x3 binomial blur
   (`Trainer.blurred`, what `--sharpen-frac` trains on; fill_input is the blurred clip's own fill): a
   denoiser that restores corners returns more fill than it was given.
2. `sampling`: the engine with config overrides (solver, shift, guidance, steps): shape accuracy per shape
   on training combinations (not held out: more squares than the quality bench's 8; `--clips 0`: none), and
   the quality bench's held-out scores (shape, also per shape, travel, sync) at the same settings, on
   `--held-out-seeds` seeds; with `--long-windows`, `ovi bench long`'s clips too (shape over every window).
3. `negative`: square prompts with the default negative prompt and with the same video prompt saying
   "circle" as the negative: guidance along (square - circle) should add corners if the model draws
   that difference as corners; it reports the accuracy, box fill and object size (pixels per frame).
4. `trajectory`: square prompts through the engine, the box fill of the guided x0 prediction
   (x_t - σ v) at every step and of the output: the σ by which the fill is settled, and whether the last,
   low-noise steps still add corners.
5. `codec`: no model. Clips of every shape at object half-width `--sizes` through the shapes codec, their
   latents' content channels moved `--blur` of the way to the 3x3 binomial blur (`content_blur`, the
   softness the model leaves), decoded and classified: how soft a latent may come out before a square
   reads as a circle, per object size (the bigger-object trial noted at ovi.train.data.OBJECT_SIZE).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "shape_diagnosis.jsonl"
SIGMAS = (0.1, 0.2, 0.3, 0.45, 0.6, 0.8)


def training_combos(shape: str, n: int) -> list[tuple[str, str, str, str]]:
    """n linear-motion training combinations with `shape`, in a fixed shuffled order."""
    from ovi.train import data
    combos = [c for c in data.training_combinations() if c[1] == shape and c[2] != "bounce"]
    random.Random(11).shuffle(combos)
    return combos[:n]


def box_fill(video: np.ndarray) -> float:
    """Bounding-box fill of a uint8 clip's object (ovi.train.metrics.shape_features); NaN when no frame holds
    the whole object, so medians skip it."""
    from ovi.train import metrics
    features = metrics.shape_features(metrics.object_mask(video))
    return np.nan if features is None else features[0]


def x0_probe(ckpt_dir: str, n: int, guidance: float, emit, blur: float = 0.0) -> None:
    from ovi.pipeline.images import to_uint8_frames
    from ovi.pipeline.objective import audio_tokens, noised, pin, video_tokens
    from ovi.train import data
    from ovi.train.train import TrainConfig, Trainer

    tr = Trainer(TrainConfig(init_from=ckpt_dir, threads=torch.get_num_threads()), Path(tempfile.mkdtemp()))
    model, t5 = tr.model.eval(), tr.t5.eval()

    def fill(x0):
        return box_fill(to_uint8_frames(tr.vcodec.decode(pin(x0, tr.vfixed))))

    # squares and their circle twins: the same clips, only the shape differs
    squares = [data.sample_spec(c, random.Random(i)) for i, c in enumerate(training_combos("square", n))]
    pairs = [(s, data.shape_twin(s)) for s in squares if data.shape_twin(s) is not None]
    for shape, specs in (("square", [p[0] for p in pairs]), ("circle", [p[1] for p in pairs])):
        for sigma in SIGMAS:
            fills = {"data": [], "input": [], "cond": [], "negative": [], "guided": []}
            for i, spec in enumerate(specs):
                x0v = tr.vcodec.encode(torch.from_numpy(data.render_video(spec)))
                source = tr.blurred(x0v[None], torch.full((1, 1, 1, 1, 1), blur))[0] if blur else x0v
                x0a = tr.acodec.encode(torch.from_numpy(data.render_audio(spec, tr.acodec.CYCLES)))
                g = torch.Generator().manual_seed(i)
                xv = pin(noised(source, torch.randn(x0v.shape, generator=g), sigma), tr.vfixed)
                xa = noised(x0a, torch.randn(x0a.shape, generator=g), sigma)
                ids, mask = tr.tokenizer([spec.prompt])
                with torch.no_grad():
                    ctx = tr.encode_text(t5, torch.cat([ids, tr.neg_ids]), torch.cat([mask, tr.neg_mask]))
                    ov, _ = model([xv, xv], [xa, xa], torch.tensor([sigma * 1000] * 2), [ctx[0], ctx[1]],
                                  [ctx[0], ctx[2]], vid_seq_len=video_tokens(tr.vshape),
                                  audio_seq_len=audio_tokens(xa.shape))
                fills["data"].append(fill(x0v))
                fills["input"].append(fill(source))
                for name, v in (("cond", ov[0]), ("negative", ov[1]), ("guided", ov[1] + guidance * (ov[0] - ov[1]))):
                    fills[name].append(fill(xv - sigma * v))
            emit({"probe": "x0", "shape": shape, "sigma": sigma, "blur": blur, "clips": len(specs),
                  "guidance": guidance,
                  **{f"fill_{k}": round(float(np.nanmedian(v)), 3) for k, v in fills.items()}})


def sampling_probe(ckpt_dir: str | None, settings: list[dict], steps: list[int], n: int, emit,
                   held_out_seeds: int = 2, long_windows: int = 0, long_seeds: int = 2) -> None:
    import ovi
    from ovi.bench.long import generate_long, measure_long
    from ovi.bench.quality import measure_engine
    from ovi.train import data, metrics

    for setting in settings:
        engine = ovi.Engine.from_config(ovi.load_config(None, **setting, **({"ckpt_dir": ckpt_dir} if ckpt_dir else {})))
        for count in steps:
            row = {"probe": "sampling", "setting": setting, "steps": count, "clips_per_shape": n,
                   "held_out_seeds": held_out_seeds}
            for shape in data.SHAPES if n else ():
                right = 0
                for i, combo in enumerate(training_combos(shape, n)):
                    clip = engine.generate(data.sample_spec(combo, random.Random(i)).prompt, seed=i, steps=count)
                    right += metrics.measure_shape(metrics.object_mask(clip.video)) == shape
                row[f"train_{shape}_accuracy"] = right / n
            measured = measure_engine(engine, data.held_out_specs(), held_out_seeds, count)[0]
            held = [(s, m) for s, m, _ in measured]
            score = metrics.score(held, data.NUM_FRAMES)
            row.update({f"held_out_{k}": round(score[k], 3) for k in ("shape_accuracy", "travel_ratio", "sync_error_frames")})
            row["held_out_min_color_motion_pitch"] = min(score[k] for k in ("color_accuracy", "motion_accuracy", "pitch_accuracy"))
            for shape in data.SHAPES:
                row[f"held_out_{shape}_accuracy"] = round(float(np.mean([m.shape == s.shape for s, m in held
                                                                         if s.shape == shape])), 3)
                # object pixels per frame: a model that draws a square as a circle of the square's area
                # shows it here (the data's circle / square areas are pi r^2 / 4 r^2)
                row[f"held_out_{shape}_pixels"] = round(float(np.mean([
                    metrics.object_mask(clip.video).mean(0).sum() for s, _, clip in measured if s.shape == shape])))
            if long_windows:  # `ovi bench long`'s clips (method ours, the engine's steps), shape per window
                right = {shape: [] for shape in data.SHAPES}  # per shape: [clip][window] right or not
                for seed in range(long_seeds):
                    for spec in data.held_out_specs():
                        video, audio, seams = generate_long(engine, spec.prompt, seed, long_windows, "ours")
                        measured = measure_long(spec, video, audio, seams, engine.spec.fps, engine.spec.sample_rate)
                        right[spec.shape].append([window["shape"] for window in measured["windows"]])
                every = [x for clips in right.values() for clip in clips for x in clip]
                row.update(long_windows=long_windows, long_seeds=long_seeds,
                           long_shape_accuracy=round(float(np.mean(every)), 3),
                           long_shape_per_window={shape: np.mean(clips, axis=0).round(3).tolist()
                                                  for shape, clips in right.items()})
            emit(row)


def negative_probe(ckpt_dir: str, n: int, emit) -> None:
    import ovi
    from ovi.train import data, metrics

    engine = ovi.Engine.from_config(ovi.load_config(None, ckpt_dir=ckpt_dir))
    specs = [data.sample_spec(c, random.Random(i)) for i, c in enumerate(training_combos("square", n))]
    for negative in ("default", "circle"):
        right, fills, pixels = 0, [], []
        for i, spec in enumerate(specs):
            video_prompt = spec.prompt.split("<AUDCAP>")[0].replace("square", "circle")
            extra = {} if negative == "default" else {"negative_prompt": video_prompt}
            video = engine.generate(spec.prompt, seed=i, steps=8, **extra).video
            mask = metrics.object_mask(video)
            right += metrics.measure_shape(mask) == "square"
            fills.append(box_fill(video))
            pixels.append(mask.sum() / len(mask))
        emit({"probe": "negative", "negative": negative, "clips": n, "square_accuracy": right / n,
              "fill_median": round(float(np.nanmedian(fills)), 3), "object_pixels": round(float(np.mean(pixels)))})


def trajectory_probe(ckpt_dir: str, steps: list[int], n: int, emit) -> None:
    import ovi
    from ovi.pipeline.images import to_uint8_frames
    from ovi.pipeline.objective import pin
    from ovi.train import data

    engine = ovi.Engine.from_config(ovi.load_config(None, ckpt_dir=ckpt_dir))
    codec = engine.components.video_codec
    seen: list[tuple[float, torch.Tensor]] = []
    guided = engine.predict

    def recording_predict(plan, video, audio, t, contexts, first_frame_is_clean):
        v, a = guided(plan, video, audio, t, contexts, first_frame_is_clean)
        seen.append((float(t) / 1000.0, video - float(t) / 1000.0 * v))
        return v, a

    engine.predict = recording_predict  # this engine instance only

    for count in steps:
        per_step, final = [], []
        for i, combo in enumerate(training_combos("square", n)):
            seen.clear()
            clip = engine.generate(data.sample_spec(combo, random.Random(i)).prompt, seed=i, steps=count)
            fixed = engine.fixed_latents(codec, seen[0][1])
            per_step.append([box_fill(to_uint8_frames(codec.decode(pin(x0, fixed)))) for _, x0 in seen])
            final.append(box_fill(clip.video))
        emit({"probe": "trajectory", "steps": count, "clips": n, "sigmas": [round(s, 3) for s, _ in seen],
              "fill_x0_per_step": np.round(np.nanmedian(np.asarray(per_step), 0), 3).tolist(),
              "fill_output": round(float(np.nanmedian(final)), 3)})


def codec_probe(sizes: list[float], blurs: list[float], n: int, emit) -> None:
    import dataclasses

    from ovi.codecs.shapes import ShapesVideoCodec
    from ovi.pipeline.images import to_uint8_frames
    from ovi.pipeline.objective import content_blur
    from ovi.train import data, metrics

    codec = ShapesVideoCodec()
    for size in sizes:
        for blur in blurs:
            row = {"probe": "codec", "size": size, "blur": blur, "clips_per_shape": n}
            for shape in data.SHAPES:
                right, feats = 0, []
                rng = random.Random(0)
                for i in range(n):
                    combo = ("red", shape, ("left", "up", "bounce")[i % 3], "low")
                    spec = dataclasses.replace(data.sample_spec(combo, rng), size=size)
                    latent = codec.encode(torch.from_numpy(data.render_video(spec)))
                    soft = content_blur(latent[None], codec.content_channels, torch.full((1, 1, 1, 1, 1), blur))[0]
                    mask = metrics.object_mask(to_uint8_frames(codec.decode(soft)))
                    right += metrics.measure_shape(mask) == shape
                    feats.append(metrics.shape_features(mask))
                fill, ratio = np.nanmedian(np.asarray([f for f in feats if f is not None]), 0)
                row.update({f"{shape}_accuracy": right / n, f"{shape}_fill": round(float(fill), 3),
                            f"{shape}_top_ratio": round(float(ratio), 3)})
            emit(row)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("probe", choices=("x0", "sampling", "negative", "trajectory", "codec"))
    ap.add_argument("--sizes", default="15,19,21,23", help="codec: comma-separated object half-widths (px)")
    ap.add_argument("--ckpt-dir", default="ovi/weights/tiny_trained")
    ap.add_argument("--label", default="shipped")
    ap.add_argument("--clips", type=int, default=8, help="training clips per shape")
    ap.add_argument("--guidance", type=float, default=4.0, help="x0: the guided mix's scale")
    ap.add_argument("--settings", default="[{}]", help="sampling: JSON list of config overrides")
    ap.add_argument("--steps", default="8", help="sampling: comma-separated step counts")
    ap.add_argument("--blur", default="0", help="x0: comma-separated blur strengths of the clean clip")
    ap.add_argument("--held-out-seeds", type=int, default=2, help="sampling: seeds per held-out combination")
    ap.add_argument("--long-windows", type=int, default=0,
                    help="sampling: also long clips of this many windows (the engine's steps), shape per window")
    ap.add_argument("--long-seeds", type=int, default=2, help="sampling: seeds per held-out long clip")
    args = ap.parse_args()
    t0, count = time.time(), 0
    RESULTS.parent.mkdir(parents=True, exist_ok=True)

    def emit(row: dict) -> None:  # one line per row as it comes: an interrupted sweep keeps what it measured
        nonlocal count
        line = json.dumps({"label": args.label, "ckpt_dir": args.ckpt_dir, **row})
        print(line, flush=True)
        with RESULTS.open("a") as f:
            f.write(line + "\n")
        count += 1

    if args.probe == "x0":
        for blur in map(float, args.blur.split(",")):
            x0_probe(args.ckpt_dir, args.clips, args.guidance, emit, blur)
    elif args.probe == "codec":
        codec_probe([float(x) for x in args.sizes.split(",")], [float(x) for x in args.blur.split(",")], args.clips, emit)
    elif args.probe == "negative":
        negative_probe(args.ckpt_dir, args.clips, emit)
    elif args.probe == "trajectory":
        trajectory_probe(args.ckpt_dir, [int(s) for s in args.steps.split(",")], args.clips, emit)
    else:
        sampling_probe(args.ckpt_dir, json.loads(args.settings), [int(s) for s in args.steps.split(",")], args.clips,
                       emit, args.held_out_seeds, args.long_windows, args.long_seeds)
    print(f"{count} rows -> {RESULTS} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
