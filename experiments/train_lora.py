"""Teach the trained tiny model a colour it never saw with a LoRA, and measure it before and after.

    .venv/bin/python experiments/train_lora.py --colour purple --rank 8 --minutes 10 --seed 0

The trained tiny model knows red, green, blue and yellow, and its word tokenizer holds no other colour
word, so "A purple circle moves up. <AUDCAP>a low tone<ENDAUDCAP>" reaches it as "A <unk> circle ...":
the base model draws whatever it makes of an unknown word. The LoRA (rank 4-16; the video branch by
default) learns what such a prompt should show from synthetic clips of a purple object drawn by the
trained model's own data renderer (ovi.train.data: every shape, motion and tone), encoded by its own
codecs, with Ovi's flow-matching loss (the codec's fixed coordinate channels pinned and out of the
loss; video and audio loss weights are flags). The quality bench's held-out combinations, recoloured
purple, are never trained on.

Measured through the real Engine on those held-out purple combinations (seeds 0..): colour accuracy with
purple added to the palette, motion and pitch accuracy, before and after (ovi.train.metrics, as `ovi
bench quality` measures); and `ovi bench quality` on its own held-out set without and with the LoRA
(what the LoRA costs the four colours the model knew). Writes experiments/results/lora_training.jsonl
and the LoRA file (its header records the command and seed).
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch

import ovi
from ovi.bench import quality
from ovi.lora import get_lora_config
from ovi.train.lora import Example, TrainableLoRA, train_flow_matching
from ovi.train import data, metrics
from run_bench import write_results  # experiments/ is on sys.path when a script here runs

HERE = Path(__file__).resolve().parent
NEW_COLOURS = {"purple": (0.6, 0.1, 0.7), "orange": (1.0, 0.55, 0.0), "cyan": (0.0, 0.9, 0.9)}


def add_training_arguments(parser: argparse.ArgumentParser, *, steps: int, lr: float, out: str, results: str) -> None:
    """The flags both LoRA scripts share: budget, optimiser, loss weights, seed, where things go."""
    parser.add_argument("--config", default=None, help="yaml config (default: the embedded trained tiny model)")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget for training")
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--seed", type=int, default=0, help="LoRA init, data placement and training noise")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 by default: on a CPU shared with other jobs, more threads than free "
                             "cores make every step many times slower)")
    parser.add_argument("--video-weight", type=float, default=1.0, help="weight of the video flow-matching loss")
    parser.add_argument("--audio-weight", type=float, default=1.0, help="weight of the audio flow-matching loss")
    parser.add_argument("--out", type=Path, default=Path("experiments/loras") / out, help="the LoRA file written")
    parser.add_argument("--results", type=Path, default=HERE / "results" / results)
    parser.add_argument("--limit", type=int, default=None, help="only the first N held-out combinations (quick checks)")
    parser.add_argument("--out-dir", default="experiments/results/lora_quality",
                        help="contact sheets and spectrograms of the clips the LoRA changes ('' for none)")


def quality_rows(config, steps: int, seeds: int, settings: list[str], out_dir: str, limit=None) -> list[dict]:
    """`ovi bench quality`'s trained-weights rows at `steps` with config overrides `settings` (e.g. a LoRA)."""
    args = argparse.Namespace(config=config, steps=str(steps), seeds=seeds, limit=limit, no_floor=True,
                              no_ceiling=True, out_dir=out_dir, set=list(settings))
    return [r for r in quality.run(args) if r["weights"] == "trained" and "kind" not in r]


def held_out_combos(colour: str) -> list[tuple[str, str, str, str]]:
    """The quality bench's held-out (shape, motion, tone) triples, in the new colour."""
    return list(dict.fromkeys((colour, shape, motion, pitch) for _, shape, motion, pitch in data.HELD_OUT))


def score_new_colour(engine, colour: str, seeds: int, loras=(), out_dir: str = "", name: str = "", limit=None) -> dict:
    """Held-out clips in the new colour through Engine.generate, measured with the colour in the palette."""
    palette = {**data.COLORS, colour: NEW_COLOURS[colour]}
    rng = random.Random(1234)  # placements as the quality bench draws its held-out specs
    specs = [data.sample_spec(combo, rng) for combo in held_out_combos(colour)][:limit]
    pairs, pictures = [], []
    for spec in specs:
        for seed in range(seeds):
            clip = engine.generate(spec.prompt, seed=seed, loras=loras)
            m = metrics.measure(clip.video, clip.audio, colors=palette)
            pairs.append((spec, m))
            pictures.append((quality.label(spec, m), clip.video, clip.audio))
    out = metrics.score(pairs, engine.spec.num_frames)
    if out_dir:
        out.update(quality.pictures(out_dir, name, pictures))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--colour", default="purple", choices=sorted(NEW_COLOURS))
    parser.add_argument("--preset", default="balanced", choices=("lightning", "balanced", "quality"),
                        help="rank / alpha of the LoRA (lightning 4, balanced 8, quality 16)")
    parser.add_argument("--rank", type=int, default=None, help="override the preset's rank (4-16)")
    parser.add_argument("--branch", default="video", choices=("video", "audio", "both"))
    parser.add_argument("--clips-per-combo", type=int, default=3, help="random placements of each trained combination")
    parser.add_argument("--keep-known", type=float, default=1.0,
                        help="clips of the known colours (training combinations) per new-colour clip, so the LoRA "
                             "keeps drawing them (prior preservation); 0 trains on the new colour alone")
    parser.add_argument("--sharpen-frac", type=float, default=0.0,
                        help="share of sharpen steps (x_t from the clip blurred, target the clip: what the base's "
                             "sharpen fine-tunes trained), so the adapter keeps the base's edges")
    parser.add_argument("--eval-seeds", type=int, default=2, help="seeds per held-out combination")
    add_training_arguments(parser, steps=3000, lr=2e-3, out="new_colour.safetensors", results="lora_training.jsonl")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    cfg = ovi.load_config(args.config)
    engine = ovi.Engine.from_config(cfg)
    if engine.components.video_codec.__class__.__name__ != "ShapesVideoCodec":
        raise SystemExit(f"train_lora.py teaches the trained tiny model (model_name tiny_trained); config "
                         f"model_name {cfg.model_name!r} does not draw its synthetic world")
    preset = get_lora_config(args.preset)
    rank = args.rank or preset["rank"]
    palette = {**data.COLORS, args.colour: NEW_COLOURS[args.colour]}
    held = set(held_out_combos(args.colour))
    combos = [(args.colour, s, m, p) for s in data.SHAPES for m in data.MOTIONS for p in data.PITCHES
              if (args.colour, s, m, p) not in held]
    rng = random.Random(args.seed)
    specs = [data.sample_spec(combo, rng) for combo in combos for _ in range(args.clips_per_combo)]
    known = data.training_combinations()
    specs += [data.sample_spec(rng.choice(known), rng) for _ in range(round(args.keep_known * len(specs)))]
    vcodec, acodec = engine.components.video_codec, engine.components.audio_codec
    examples = []
    t0 = time.perf_counter()
    for spec in specs:
        plan = engine.plan(spec.prompt)
        with torch.no_grad():
            context = engine.encode_text(plan)[0]
            video = vcodec.encode(torch.from_numpy(data.render_video(spec, palette))).float().to(engine.device)
            audio = acodec.encode(torch.from_numpy(data.render_audio(spec, acodec.CYCLES))).float().to(engine.device)
        examples.append(Example(video, audio, context, engine.fixed_latents(vcodec, video),
                                engine.fixed_latents(acodec, audio)))
    data_seconds = time.perf_counter() - t0
    rng.shuffle(examples)

    command = "python " + " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    stamp = {"host": socket.gethostname(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "config": args.config or "default", "seed": args.seed, "command": command,
             "attribute": f"colour {args.colour} {list(NEW_COLOURS[args.colour])}", "rank": rank,
             "keep_known": args.keep_known, "sharpen_frac": args.sharpen_frac,
             "branch": args.branch, "video_weight": args.video_weight, "audio_weight": args.audio_weight}
    lines = []

    def record(phase, row):
        lines.append({**row, "bench": "lora_training", "phase": phase, **stamp})
        print(json.dumps(lines[-1], sort_keys=True), flush=True)

    record("before", {"set": "new colour, held out", "steps": cfg.sample_steps,
                      **score_new_colour(engine, args.colour, args.eval_seeds, (), args.out_dir, "new_colour_before",
                                        args.limit)})
    lora = TrainableLoRA(engine.model, rank=rank, alpha=preset["alpha"] if args.rank is None else rank,
                         branch=args.branch, seed=args.seed)

    def report(step, parts):
        if step % 100 == 0:
            print(f"step {step} loss {float(parts.total.detach()):.4f} (video {parts.video:.4f}, audio {parts.audio:.4f})",
                  flush=True)
    history = train_flow_matching(lora, examples, steps=args.steps, lr=args.lr, video_weight=args.video_weight,
                                  audio_weight=args.audio_weight, seed=args.seed, time_limit=args.minutes * 60,
                                  on_step=report, sharpen_frac=args.sharpen_frac)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    lora.save(args.out, extra={"training": {**stamp, "steps": len(history.loss), "seconds": history.seconds,
                                            "lr": args.lr, "examples": len(examples),
                                            "new_colour": {args.colour: list(NEW_COLOURS[args.colour])},
                                            "held_out": [list(c) for c in sorted(held)]}})
    lora.remove()
    window = max(1, len(history.loss) // 10)
    record("train", {"steps": len(history.loss), "seconds": history.seconds, "data_seconds": data_seconds,
                     "examples": len(examples), "loss_first": float(np.mean(history.loss[:window])),
                     "loss_last": float(np.mean(history.loss[-window:])), "lora": str(args.out),
                     "lora_bytes": args.out.stat().st_size})
    record("after", {"set": "new colour, held out", "steps": cfg.sample_steps,
                     **score_new_colour(engine, args.colour, args.eval_seeds, (str(args.out),), args.out_dir,
                                        "new_colour_after", args.limit)})
    for phase, settings in (("before", []), ("after", [f"lora=[{args.out}]"])):
        (row,) = quality_rows(args.config, cfg.sample_steps, args.eval_seeds, settings, "", args.limit)
        record(phase, {**row, "set": "known colours, held out (ovi bench quality)"})
    write_results(args.results, [json.dumps(line, sort_keys=True) for line in lines])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
