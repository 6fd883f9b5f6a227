"""LoRAs on the trained tiny model (the embedded default): the quality bench runs and records a
Lightning + LoRA set, and the two LoRAs shipped in experiments/loras do what their results say, on
prompts never trained on (the quality bench's held-out combinations)."""

import json
import random
from pathlib import Path

import pytest
import torch

import ovi
from ovi.checkpoint.loading import read_metadata
from ovi.cli import main
from ovi.lora import save_native_lora
from ovi.train import data, metrics
from tests.parallel.counting import StepCounter

LORAS = Path(__file__).resolve().parents[2] / "experiments" / "loras"


@pytest.fixture(scope="module")
def trained():
    return ovi.Engine.from_config(ovi.load_config())


def _held_out_prompts(colour=None, picks=(1, 2)):
    rng = random.Random(1234)  # the quality bench's placements
    specs = [data.sample_spec(combo, rng) for combo in data.HELD_OUT]
    specs = [specs[i] for i in picks]
    return [s.prompt if colour is None else data.caption(colour, s.shape, s.motion, s.pitch) for s in specs], specs


def test_quality_bench_rows_record_the_lightning_profile_and_the_lora_set(trained, capsys, tmp_path):
    g = torch.Generator().manual_seed(0)
    factors = {f"video_model.blocks.0.{name}": (0.01 * torch.randn(4, m.in_features, generator=g),
                                                0.01 * torch.randn(m.out_features, 4, generator=g))
               for name, m in trained.model.video_model.blocks[0].named_modules()
               if isinstance(m, torch.nn.Linear) and name.startswith("self_attn")}
    lora = save_native_lora(tmp_path / "small.safetensors", factors, trained.model, alpha=4.0)
    assert main(["bench", "quality", "--json", "--steps", "4", "--seeds", "1", "--limit", "1", "--no-floor",
                 "--no-ceiling", "--out-dir", "", "--set", "lightning=true", "--set", f"lora=[{lora}]"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    (row,) = [r for r in rows if "kind" not in r]
    assert (row["steps"], row["solver"], row["video_guidance_scale"], row["lightning"]) == (4, "euler", 1.0, True)
    assert row["loras"] == [{"name": "small", "weight": 1.0, "merged": True}] and row["denoise_seconds"] > 0
    for key in ("color_accuracy", "motion_accuracy", "pitch_accuracy", "sync_error_frames"):
        assert key in row


def test_shipped_lightning_lora_brings_four_steps_closer_to_the_full_step_clip(trained):
    lora = str(LORAS / "lightning_4step.safetensors")
    prompts, _ = _held_out_prompts()
    gaps = {False: [], True: []}
    for prompt in prompts:
        full = trained.generate(prompt, seed=0).latents["video"]
        for with_lora in gaps:
            clip = trained.generate(prompt, seed=0, lightning=True, loras=[lora] if with_lora else [])
            assert clip.meta["steps"] == 4 and clip.meta["lightning"]["used"]["video_guidance_scale"] == 1.0
            gaps[with_lora].append(float((clip.latents["video"] - full).pow(2).mean().sqrt()))
    assert sum(gaps[True]) < sum(gaps[False]), gaps


def test_shipped_lightning_lora_keeps_held_out_accuracy_at_four_forwards(trained):
    """The README's Lightning row: on the bench's 12 held-out combinations x 2 seeds, the distilled LoRA at
    4 forwards draws the asked colour, motion and pitch (>= 0.9 each), with bounce clicks within a frame."""
    lora = str(LORAS / "lightning_4step.safetensors")
    with StepCounter(trained) as counter:
        specs = data.held_out_specs()
        hits, sync = {"color": 0, "motion": 0, "pitch": 0}, []
        for combo, spec in zip(data.HELD_OUT, specs):
            for seed in (0, 1):
                counter.forwards_per_step.clear()
                clip = trained.generate(spec.prompt, seed=seed, lightning=True, loras=[lora], progress=counter.progress)
                assert sum(counter.forwards_per_step) == 4, counter.forwards_per_step  # guidance off: 1 per step
                m = metrics.measure(clip.video, clip.audio)
                for key, index in (("color", 0), ("motion", 2), ("pitch", 3)):
                    hits[key] += getattr(m, key) == combo[index]
                if combo[2] == "bounce":
                    sync.append(metrics.sync_error(m, clip.num_frames))
    accuracy = {key: n / (2 * len(specs)) for key, n in hits.items()}
    assert min(accuracy.values()) >= 0.9, accuracy
    assert len(sync) == 6 and max(sync) <= 1.0, sync


def test_shipped_new_colour_lora_draws_the_colour_the_model_never_saw(trained):
    path = LORAS / "new_colour.safetensors"
    header = json.loads(read_metadata(path)["ovi_lora"])
    (colour, rgb), = header["training"]["new_colour"].items()
    palette = {**data.COLORS, colour: tuple(rgb)}
    prompts, specs = _held_out_prompts(colour)
    for prompt, spec in zip(prompts, specs):
        before = trained.generate(prompt, seed=0)
        after = trained.generate(prompt, seed=0, loras=[str(path)])
        seen_before = metrics.measure(before.video, before.audio, colors=palette)
        seen_after = metrics.measure(after.video, after.audio, colors=palette)
        assert seen_before.color != colour, prompt  # the base model has no such colour word
        assert (seen_after.color, seen_after.motion) == (colour, spec.motion), (prompt, seen_after.track)
