"""Training the tiny model from scratch: a few steps lower the loss, the recipe is the shipped preset, and
an exported run loads through the real checkpoint path."""

import dataclasses
import json

import torch

import ovi
from ovi.codecs.text import T5_CONFIGS
from ovi.model.configs import architecture
from ovi.train import data
from ovi.train.train import Dataset, TrainConfig, Trainer, export, make_specs, model_configs, t5_config, train


def test_recipe_defaults_are_the_tiny_trained_preset():
    cfg = TrainConfig()
    assert list(model_configs(cfg)) == list(architecture("tiny_trained"))
    assert t5_config(cfg, len(data.vocabulary())) == T5_CONFIGS["tiny_trained"]


def _fixed_batch_loss(tr, ds):
    """The training loss on one fixed batch (same clips, noise levels, noise and dropout draws)."""
    gen = torch.Generator().manual_seed(123)
    idx = torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        lv, la, _ = tr.loss(ds, idx, gen)
    return float(lv + la)


def test_a_few_steps_from_scratch_lower_the_loss_and_export_loads(tmp_path):
    # threads: keep the test process's own setting (the recipe's 2 would leak into later tests)
    cfg = TrainConfig(data="gate", steps=30, batch=4, lr=1e-3, warmup=5, eval_every=0, ckpt_every=1000,
                      threads=torch.get_num_threads())
    fresh = Trainer(cfg, tmp_path)  # the same seeded init train() starts from
    ds = Dataset(make_specs(cfg), fresh.tokenizer, fresh.vcodec, fresh.acodec)
    before = _fixed_batch_loss(fresh, ds)
    tr = train(cfg, tmp_path / "run", progress=False)
    after = _fixed_batch_loss(tr, ds)
    assert after < 0.9 * before, (before, after)
    assert (tmp_path / "run" / "ckpt.pt").is_file() and (tmp_path / "run" / "loss.jsonl").read_text().count("\n") == 30

    resumed = Trainer(cfg, tmp_path / "run")
    resumed.load(tmp_path / "run" / "ckpt.pt")
    assert resumed.step == 30 and _fixed_batch_loss(resumed, ds) == after

    ckpt = export(tr, tmp_path / "ckpt")
    engine = ovi.Engine.from_config(ovi.load_config(ckpt_dir=str(ckpt), sample_steps=1))
    assert dataclasses.asdict(engine.components)["video_codec"].__class__.__name__ == "ShapesVideoCodec"
    sd = engine.model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in tr.ema_model.state_dict().items())
    clip = engine.generate("A red square moves left. <AUDCAP>a low tone<ENDAUDCAP>", seed=0)
    assert clip.video.shape == (17, 128, 128, 3)


def test_stop_at_ends_a_run_part_way_through_its_schedule_and_a_rerun_finishes_it(tmp_path):
    """`stop_at` ends at that step with the lr of the longer schedule (a fine-tune that starts from a
    mid-run checkpoint reproduces it); a rerun of the same folder without it goes on to `steps`."""
    cfg = TrainConfig(data="gate", steps=6, stop_at=3, batch=2, warmup=1, eval_every=0, ckpt_every=1000,
                      threads=torch.get_num_threads())
    train(cfg, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "loss.jsonl").read_text().splitlines()]
    full = Trainer(dataclasses.replace(cfg, stop_at=0), tmp_path / "schedule")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["lr"] for r in rows] == [full.lr_at(s) for s in range(3)]
    tr = train(dataclasses.replace(cfg, stop_at=0), tmp_path, progress=False)
    assert tr.step == 6 and (tmp_path / "loss.jsonl").read_text().count("\n") == 6
