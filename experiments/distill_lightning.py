"""Distil a 4-step Lightning LoRA from the many-step model (ovi.lora.training), ship it, and measure it.

    .venv/bin/python experiments/distill_lightning.py --minutes 10

Teacher: the base model with its guidance scales, Euler with `--substeps` steps inside each of the
student's intervals (4 x 8 = 32 steps, two passes each); its trajectories are computed once. Student: base + a rank-4 LoRA (the lightning
preset) on both branches, guidance off, one Euler step per interval on the Lightning grid (sigmas
1, 0.75, 0.5, 0.25 before shift 5). Objective: from each teacher state the student's one step must land
on the teacher's next state. The LoRA is saved with that profile in its header, so `lightning: true`
samples exactly as trained. Reported on held-out seeds, every row through `Engine.generate`: the latent gap
(MSE of the final latents) to the teacher's trajectory end at 4 Lightning steps without and with the LoRA,
and the denoising time of the teacher (Euler, guided, same step count) and of the student (the speed-up).
Writes experiments/results/lightning_distill.jsonl.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from pathlib import Path


import ovi
from ovi.lora import LightningProfile, get_lora_config
from ovi.lora.training import TrainableLoRA, euler_trajectory, student_sigmas, train_distillation
from run_bench import write_results  # experiments/ is on sys.path when a script here runs
from train_lora import add_training_arguments

HERE = Path(__file__).resolve().parent
PROMPTS = ["A red ball bounces on a wooden floor. <AUDCAP>thuds<ENDAUDCAP>",
           "A blue square moves left. <AUDCAP>a low tone<ENDAUDCAP>",
           "A green circle moves up. <AUDCAP>a high tone<ENDAUDCAP>",
           "A yellow triangle moves right. <AUDCAP>a middle tone<ENDAUDCAP>"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--substeps", type=int, default=8, help="teacher Euler steps per student interval")
    parser.add_argument("--train-seeds", type=int, default=4, help="seeds per prompt for teacher trajectories")
    parser.add_argument("--eval-seeds", type=int, default=2, help="held-out seeds per prompt")
    add_training_arguments(parser, steps=300, out="lightning_4step.safetensors", results="lightning_distill.jsonl")
    args = parser.parse_args(argv)

    engine = ovi.Engine.from_config(ovi.load_config(args.config))
    profile = LightningProfile()
    sigmas = student_sigmas(profile.sigmas, profile.shift)
    preset = get_lora_config("lightning")

    def pair(prompt, seed):
        """(teacher velocity, student velocity, initial noise) for one prompt and seed."""
        plan = engine.plan(prompt, seed=seed)
        contexts = engine.encode_text(plan)
        teacher = lambda v, a, s: engine.predict(plan, v, a, 1000.0 * s, contexts, False)  # noqa: E731
        student = lambda v, a, s: engine.model_pass(plan, v, a, 1000.0 * s, contexts[0], contexts[0], False)  # noqa: E731
        return teacher, student, engine.initial_latents(plan)

    t0 = time.perf_counter()
    train = []
    for prompt in PROMPTS:
        for seed in range(args.train_seeds):
            teacher, student, (video, audio) = pair(prompt, seed)
            train.append((euler_trajectory(teacher, video, audio, sigmas, args.substeps), student))
    teacher_seconds = time.perf_counter() - t0
    held_out = []  # (prompt, seed, the teacher's final latents from the same noise)
    for prompt in PROMPTS:
        for seed in range(1000, 1000 + args.eval_seeds):
            teacher, _, (video, audio) = pair(prompt, seed)
            held_out.append((prompt, seed, euler_trajectory(teacher, video, audio, sigmas, args.substeps)[-1]))

    def through_pipeline(loras=(), **fields):
        """Held-out clips through Engine.generate: mean latent gap to the teacher, mean denoise seconds."""
        gaps, seconds = [], []
        for prompt, seed, target in held_out:
            clip = engine.generate(prompt, seed=seed, loras=loras, **fields)
            gaps.append([float(((clip.latents[k] - t.cpu()) ** 2).mean()) for k, t in zip(("video", "audio"), target)])
            seconds.append(clip.meta["timings"]["denoise"])
        return {"video_gap": sum(g[0] for g in gaps) / len(gaps), "audio_gap": sum(g[1] for g in gaps) / len(gaps),
                "denoise_seconds": sum(seconds) / len(seconds), "steps": clip.meta["steps"],
                "sigmas": (clip.meta["lightning"] or {}).get("used", {}).get("sigmas")}

    stamp = {"host": socket.gethostname(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "config": args.config or "tiny", "teacher_steps": 4 * args.substeps, "rank": preset["rank"],
             "video_weight": args.video_weight, "audio_weight": args.audio_weight}
    # The teacher as a user runs it (Euler, its guidance, the same step count); gaps are ~0 by construction
    # up to the grid (uniform in the shifted sigma here vs per interval there), the time is the reference.
    teacher_row = through_pipeline(solver="euler", steps=4 * args.substeps)
    lines = [{"bench": "lightning_distill", "phase": "teacher", **stamp, **teacher_row}]
    lines.append({"bench": "lightning_distill", "phase": "before", **stamp, **through_pipeline(lightning=True)})
    lora = TrainableLoRA(engine.model, rank=preset["rank"], alpha=preset["alpha"], branch="both")
    history = train_distillation(lora, train, sigmas, steps=args.steps, lr=args.lr, video_weight=args.video_weight,
                                 audio_weight=args.audio_weight, time_limit=args.minutes * 60)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    lora.save(args.out, extra={"lightning": profile.to_dict(),
                               "training": {**stamp, "objective": "teacher trajectory (one student Euler step per "
                                                                  "interval)", "steps": len(history.loss)}})
    lora.remove()
    lines.append({"bench": "lightning_distill", "phase": "train", **stamp, "steps": len(history.loss),
                  "seconds": history.seconds, "teacher_trajectory_seconds": teacher_seconds,
                  "loss_first": history.loss[0], "loss_last": history.loss[-1], "lora": str(args.out),
                  "lora_bytes": args.out.stat().st_size})
    # The shipped file, merged, through the real pipeline: `lightning: true` samples on the trained grid.
    after = through_pipeline(loras=(str(args.out),), lightning=True)
    lines.append({"bench": "lightning_distill", "phase": "after", **stamp, **after,
                  "speedup": teacher_row["denoise_seconds"] / after["denoise_seconds"]})
    write_results(args.results, [json.dumps(line, sort_keys=True) for line in lines])
    for line in lines:
        print(json.dumps(line, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
