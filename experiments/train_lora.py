"""Teach the tiny model something it never saw with a LoRA (ovi.lora.training), and measure before/after.

    .venv/bin/python experiments/train_lora.py --colour purple --tone 625 --rank 8 --minutes 10

Synthetic clips (a square of the new colour moving on a grey background, with a steady tone) are
encoded by the config's codecs; their prompts by the engine's text encoder. A rank 4-16 LoRA is
trained with Ovi's flow-matching loss (video / audio loss weights are flags) within a wall-clock budget,
saved in the native format, then clips are generated for the training prompts without and with it.
Metrics (stand-ins until `ovi bench quality` from the trained-tiny-model work lands on main):
`colour_share` - share of pixels nearest the target colour in a small palette; `target_mse` - pixel
MSE against the synthetic clip of the same prompt; `tone_share` - share of the audio's energy in the
target tone's bin. Writes experiments/results/lora_training.jsonl (one line per phase) and the LoRA.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import time
from pathlib import Path

import torch

import ovi
from ovi.lora import get_lora_config
from ovi.lora.training import Example, TrainableLoRA, train_flow_matching
from run_bench import write_results  # experiments/ is on sys.path when a script here runs

HERE = Path(__file__).resolve().parent
COLOURS = {"purple": (0.6, 0.1, 0.7), "orange": (1.0, 0.55, 0.0), "cyan": (0.0, 0.9, 0.9),
           "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0)}
BACKGROUND = (0.5, 0.5, 0.5)
MOTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def synthetic_clip(colour, motion, frames, height, width, samples, sample_rate, tone_hz):
    """Pixels in [-1, 1] [3, F, H, W] (a square crossing a grey frame) and a tone [samples]."""
    video = torch.tensor(BACKGROUND).view(3, 1, 1, 1).expand(3, frames, height, width).clone()
    side = height // 4
    dx, dy = MOTIONS[motion]
    for f in range(frames):
        p = f / max(1, frames - 1)
        x = int((width - side) * (p if dx > 0 else 1 - p)) if dx else (width - side) // 2
        y = int((height - side) * (p if dy > 0 else 1 - p)) if dy else (height - side) // 2
        video[:, f, y: y + side, x: x + side] = torch.tensor(colour).view(3, 1, 1)
    t = torch.arange(samples, dtype=torch.float64) / sample_rate
    audio = (0.25 * torch.sin(2 * math.pi * tone_hz * t)).float()
    return video * 2 - 1, audio


def prompt_for(colour, motion, tone_hz):
    return f"A {colour} square moves {motion}. <AUDCAP>a steady {int(tone_hz)} Hz tone<ENDAUDCAP>"


def add_training_arguments(parser: argparse.ArgumentParser, *, steps: int, out: str, results: str) -> None:
    """The flags both LoRA scripts share: budget, optimiser, loss weights, where the LoRA and results go."""
    parser.add_argument("--config", default=None, help="yaml config (default: the embedded tiny model)")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget for training")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--video-weight", type=float, default=1.0, help="weight of the video flow-matching loss")
    parser.add_argument("--audio-weight", type=float, default=1.0, help="weight of the audio flow-matching loss")
    parser.add_argument("--out", type=Path, default=HERE / "loras" / out, help="the LoRA file written")
    parser.add_argument("--results", type=Path, default=HERE / "results" / results)


def clip_metrics(clip, target_video, colour, tone_hz) -> dict:
    frames = torch.from_numpy(clip.video).float() / 255.0            # [F, H, W, 3] in [0, 1]
    palette = torch.tensor([COLOURS[colour], BACKGROUND] + [c for n, c in COLOURS.items() if n != colour])
    nearest = torch.cdist(frames.reshape(-1, 3), palette).argmin(dim=1)
    target = (target_video.permute(1, 2, 3, 0) + 1) / 2
    wave = torch.from_numpy(clip.audio).double()
    spectrum = torch.fft.rfft(wave).abs() ** 2
    freqs = torch.fft.rfftfreq(wave.numel(), 1 / clip.sample_rate)
    band = (freqs - tone_hz).abs() < 20
    return {"colour_share": float((nearest == 0).float().mean()),
            "target_mse": float(((frames - target) ** 2).mean()),
            "tone_share": float(spectrum[band].sum() / spectrum.sum().clamp_min(1e-12))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--colour", default="purple", choices=sorted(COLOURS))
    parser.add_argument("--tone", type=float, default=625.0, help="Hz (the toy audio codec holds multiples of 31.25)")
    parser.add_argument("--preset", default="balanced", choices=("lightning", "balanced", "quality"),
                        help="rank / alpha of the LoRA (lightning 4, balanced 8, quality 16)")
    parser.add_argument("--rank", type=int, default=None, help="override the preset's rank (4-16)")
    parser.add_argument("--branch", default="both", choices=("video", "audio", "both"))
    add_training_arguments(parser, steps=400, out="new_colour.safetensors", results="lora_training.jsonl")
    args = parser.parse_args(argv)

    cfg = ovi.load_config(args.config)
    engine = ovi.Engine.from_config(cfg)
    preset = get_lora_config(args.preset)
    rank = args.rank or preset["rank"]
    spec, codec = engine.spec, engine.components.video_codec
    examples, targets = [], {}
    for motion in MOTIONS:
        prompt = prompt_for(args.colour, motion, args.tone)
        plan = engine.plan(prompt)
        video, audio = synthetic_clip(COLOURS[args.colour], motion, plan.num_frames, plan.height, plan.width,
                                      spec.audio_latent_length * 512, spec.sample_rate, args.tone)
        with torch.no_grad():
            contexts = engine.encode_text(plan)
            latent_v = codec.encode(video.to(engine.device)).float()
            latent_a = engine.components.audio_codec.encode(audio.to(engine.device)).float()[: spec.audio_latent_length]
        examples.append(Example(latent_v, latent_a, contexts[0]))
        targets[prompt] = video

    stamp = {"host": socket.gethostname(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": args.config or "tiny",
             "colour": args.colour, "tone_hz": args.tone, "rank": rank, "branch": args.branch,
             "video_weight": args.video_weight, "audio_weight": args.audio_weight}
    lines = []

    def evaluate(phase, loras=()):
        rows = [clip_metrics(engine.generate(p, seed=11, loras=loras), targets[p], args.colour, args.tone)
                for p in targets]
        record = {"bench": "lora_training", "phase": phase, **stamp,
                  **{k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}}
        lines.append(json.dumps(record, sort_keys=True))
        print(lines[-1], flush=True)

    evaluate("before")
    lora = TrainableLoRA(engine.model, rank=rank, alpha=preset["alpha"] if args.rank is None else rank,
                         branch=args.branch)

    def report(step, parts):
        if step % 25 == 0:
            print(f"step {step} loss {float(parts.total.detach()):.4f} (video {parts.video:.4f}, audio {parts.audio:.4f})",
                  flush=True)
    history = train_flow_matching(lora, examples, steps=args.steps, lr=args.lr, video_weight=args.video_weight,
                                  audio_weight=args.audio_weight, time_limit=args.minutes * 60, on_step=report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    lora.save(args.out, extra={"training": {**stamp, "steps": len(history.loss), "seconds": history.seconds,
                                            "lr": args.lr, "prompts": list(targets)}})
    lora.remove()
    window = max(1, len(history.loss) // 10)
    lines.append(json.dumps({"bench": "lora_training", "phase": "train", **stamp, "steps": len(history.loss),
                             "seconds": history.seconds, "loss_first": sum(history.loss[:window]) / window,
                             "loss_last": sum(history.loss[-window:]) / window, "lora": str(args.out),
                             "lora_bytes": args.out.stat().st_size}, sort_keys=True))
    print(lines[-1], flush=True)
    evaluate("after", loras=(str(args.out),))
    write_results(args.results, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
