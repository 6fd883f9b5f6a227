"""Distil a 4-step Lightning LoRA from the trained tiny model, ship it, and measure it with `ovi bench quality`.

    .venv/bin/python experiments/distill_lightning.py --minutes 10 --seed 0

Teacher: the trained tiny model as configured (its guidance: video 2, audio 3), integrated with Euler,
`--substeps` steps inside each of the student's four intervals (4 x 8 = 32 guided steps), from noise
with the codec's fixed coordinate channels written in (as the engine does). Trajectories come from
training combinations of colour, shape, motion and tone only (never the quality bench's held-out ones)
and noise seeds 100+, and are computed once. Student: base + a rank-4 LoRA (the lightning preset) on
both branches, guidance off, one Euler step per interval on the Lightning grid (sigmas 1, 0.75, 0.5,
0.25 before shift 5). Objective: from each teacher state, the student's one step lands on the teacher's
next state (video and audio loss weights are flags). The LoRA is saved with that profile in its header,
so `lightning: true` samples exactly as trained.

Then the quality bench, on its held-out combinations and seeds, through the real Engine: the full-step
model (the config's default steps, its solver and guidance), the same at 4 steps, Lightning 4 steps
without the LoRA, and Lightning 4 steps with it. Writes experiments/results/lightning_distill.jsonl
(the bench's rows with a `variant`, plus a `train` row) and the LoRA file.
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
from ovi.lora import LightningProfile, get_lora_config
from ovi.pipeline.objective import pin
from ovi.train.lora import TrainableLoRA, euler_trajectory, pinned, student_sigmas, train_distillation
from ovi.train import data
from run_bench import write_results  # experiments/ is on sys.path when a script here runs
from train_lora import add_training_arguments, quality_rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--substeps", type=int, default=8, help="teacher Euler steps per student interval")
    parser.add_argument("--combos", type=int, default=24, help="training combinations for teacher trajectories")
    parser.add_argument("--train-seeds", type=int, default=2, help="noise seeds per combination")
    parser.add_argument("--eval-seeds", type=int, default=2, help="seeds per held-out combination (quality bench)")
    add_training_arguments(parser, steps=600, lr=2e-3, out="lightning_4step.safetensors",
                           results="lightning_distill.jsonl")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    cfg = ovi.load_config(args.config)
    engine = ovi.Engine.from_config(cfg)
    profile = LightningProfile()
    sigmas = student_sigmas(profile.sigmas, profile.shift)
    preset = get_lora_config("lightning")
    rng = random.Random(args.seed)
    combos = rng.sample(data.training_combinations(), args.combos)

    t0 = time.perf_counter()
    trajectories = []
    for combo in combos:
        prompt = data.caption(*combo, variant=rng.randint(0, 1))
        for seed in range(100 + args.seed * 1000, 100 + args.seed * 1000 + args.train_seeds):
            plan = engine.plan(prompt, seed=seed)
            contexts = engine.encode_text(plan)
            video, audio = engine.initial_latents(plan)
            fixed = (engine.fixed_latents(engine.components.video_codec, video),
                     engine.fixed_latents(engine.components.audio_codec, audio))
            teacher = pinned(lambda v, a, s, plan=plan, c=contexts: engine.predict(plan, v, a, 1000.0 * s, c, False),
                             *fixed)
            student = pinned(lambda v, a, s, plan=plan, c=contexts[0]:
                             engine.model_pass(plan, v, a, 1000.0 * s, c, c, False), *fixed)
            start = (pin(video, fixed[0]), pin(audio, fixed[1]))
            trajectories.append((euler_trajectory(teacher, *start, sigmas, args.substeps), student))
    teacher_seconds = time.perf_counter() - t0

    lora = TrainableLoRA(engine.model, rank=preset["rank"], alpha=preset["alpha"], branch="both", seed=args.seed)

    def report(step, parts):
        if step % 50 == 0:
            print(f"step {step} loss {float(parts.total.detach()):.4f} (video {parts.video:.4f}, audio {parts.audio:.4f})",
                  flush=True)
    history = train_distillation(lora, trajectories, sigmas, steps=args.steps, lr=args.lr,
                                 video_weight=args.video_weight, audio_weight=args.audio_weight,
                                 time_limit=args.minutes * 60, on_step=report)
    command = "python " + " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    stamp = {"host": socket.gethostname(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": args.config or "default",
             "seed": args.seed, "command": command, "rank": preset["rank"], "teacher_steps": 4 * args.substeps,
             "video_weight": args.video_weight, "audio_weight": args.audio_weight}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    lora.save(args.out, extra={"lightning": profile.to_dict(),
                               "training": {**stamp, "objective": "teacher trajectory (one student Euler step per "
                                                                  "interval)", "steps": len(history.loss),
                                            "combos": len(combos), "trajectories": len(trajectories)}})
    lora.remove()
    window = max(1, len(history.loss) // 10)
    lines = [{"bench": "lightning_distill", "phase": "train", **stamp, "steps": len(history.loss),
              "seconds": history.seconds, "teacher_trajectory_seconds": teacher_seconds,
              "trajectories": len(trajectories), "loss_first": sum(history.loss[:window]) / window,
              "loss_last": sum(history.loss[-window:]) / window, "lora": str(args.out),
              "lora_bytes": args.out.stat().st_size}]

    # The clips themselves against the full-step model's clip from the same noise (the distillation's target):
    # the accuracies above saturate when even the base model is right at 4 steps, this gap does not.
    rng_eval = random.Random(1234)  # the quality bench's held-out placements
    prompts = [data.sample_spec(combo, rng_eval).prompt for combo in data.HELD_OUT][: args.limit]
    reference = {(p, s): engine.generate(p, seed=s) for p in prompts for s in range(args.eval_seeds)}

    def gap_to_full(**fields) -> dict:
        pixel, latent = [], []
        for (p, s), ref in reference.items():
            clip = engine.generate(p, seed=s, **fields)
            pixel.append(float(np.abs(clip.video.astype(np.float32) - ref.video.astype(np.float32)).mean() / 255))
            latent.append(float((clip.latents["video"] - ref.latents["video"]).pow(2).mean().sqrt()))
        return {"pixel_mae_to_full": float(np.mean(pixel)), "video_latent_rms_to_full": float(np.mean(latent))}

    lora_set = f"lora=[{args.out}]"
    variants = [("full steps", cfg.sample_steps, [], {}), ("4 steps", 4, [], {"steps": 4}),
                ("lightning", 4, ["lightning=true"], {"lightning": True}),
                ("lightning + distilled LoRA", 4, ["lightning=true", lora_set],
                 {"lightning": True, "loras": [str(args.out)]})]
    full = None
    for variant, steps, settings, fields in variants:
        pictures = args.out_dir if settings else ""  # contact sheets of the two Lightning rows
        (row,) = quality_rows(args.config, steps, args.eval_seeds, settings, pictures, args.limit)
        row.update(gap_to_full(**fields))
        full = full or row
        row.update(variant=variant, **{f"{k}_of_full": row[k] / full[k] if full[k] else None
                                      for k in ("color_accuracy", "motion_accuracy", "pitch_accuracy")},
                   speedup_denoise=full["denoise_seconds"] / row["denoise_seconds"])
        lines.append({**row, **stamp, "bench": "lightning_distill", "phase": "eval"})
        print(json.dumps(lines[-1], sort_keys=True), flush=True)
    write_results(args.results, [json.dumps(line, sort_keys=True) for line in lines])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
