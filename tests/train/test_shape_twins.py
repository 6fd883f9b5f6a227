"""Shape-twin batches (`shape_twin_frac`): each clip beside the same clip drawn with its twin shape, the pair
sharing noise, σ and guidance dropout, never on a held-out combination."""

import dataclasses
import json
import random

import torch

from ovi.train import data
from ovi.train.train import Dataset, TrainConfig, Trainer, make_specs, train
from tests.train.fakes import Recorder


def test_a_twin_is_the_same_clip_with_the_other_shape_and_never_held_out():
    rng = random.Random(0)
    seen = 0
    for combo in data.training_combinations():
        spec = data.sample_spec(combo, rng)
        twin = data.shape_twin(spec)
        if twin is None:
            assert (spec.color, data.SHAPE_TWINS[spec.shape], spec.motion, spec.pitch) in data.HELD_OUT
            continue
        seen += 1
        assert twin.shape == data.SHAPE_TWINS[spec.shape] != spec.shape
        assert dataclasses.replace(twin, shape=spec.shape) == spec
        assert twin.combo not in data.HELD_OUT
    assert seen > 150  # only the few whose twin is held out go without one


def test_twin_pairs_share_noise_sigma_and_dropout_and_differ_in_the_shape(tmp_path):
    cfg = TrainConfig(num_clips=12, curriculum_steps=0, p_uncond=0.5, threads=torch.get_num_threads())
    tr = Trainer(cfg, tmp_path)
    tr.t5.eval()  # no dropout: the negative prompt's encoding is then one tensor to recognise
    specs = make_specs(cfg)
    ds = Dataset(specs, tr.tokenizer, tr.vcodec, tr.acodec, twins=True)
    assert len(ds.twin_of) == sum(data.shape_twin(s) is not None for s in specs) > 0
    j = 0
    twin = data.shape_twin(specs[int(ds.twin_of[j])])
    assert torch.equal(ds.twin_video[j], tr.vcodec.encode_content(torch.from_numpy(data.render_video(twin))).half())
    assert torch.equal(ds.twin_ids[j], tr.tokenizer([twin.prompt])[0][0])

    rec = Recorder()
    idx = torch.arange(min(4, len(ds.twin_of)))
    n = len(idx)
    tr.loss(ds, idx, torch.Generator().manual_seed(5), model=rec, twins=True)
    assert torch.equal(rec.t[:n], rec.t[n:])
    sigma = (rec.t[:n] / 1000.0).view(n, 1, 1, 1, 1)
    own = tr.video_latents(ds.video[ds.twin_of[idx]])
    other = tr.video_latents(ds.twin_video[idx])
    # x_t = (1 - σ) x0 + σ ε with one ε per pair: the pair's difference is the clean difference, scaled
    assert torch.allclose(rec.xv[:n] - rec.xv[n:], (1 - sigma) * (own - other), atol=1e-5)
    assert not torch.equal(own, other)
    # guidance dropout: within a pair both or neither get the negative prompt (over a few draws, both happen)
    with torch.no_grad():
        negative = tr.encode_text(tr.t5, tr.neg_ids, tr.neg_mask)[0]
    dropped = []
    for seed in range(6):
        tr.loss(ds, idx, torch.Generator().manual_seed(seed), model=rec, twins=True)
        flags = [v.shape == negative.shape and torch.allclose(v, negative, atol=1e-5) for v in rec.vctx]
        assert flags[:n] == flags[n:]
        dropped += flags[:n]
    assert any(dropped) and not all(dropped)


def test_a_short_run_with_twins_trains_and_logs_them(tmp_path):
    cfg = TrainConfig(num_clips=12, steps=4, batch=4, warmup=1, eval_every=0, ckpt_every=1000, curriculum_steps=0,
                      shape_twin_frac=1.0, threads=torch.get_num_threads())
    train(cfg, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "loss.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["twins"] for r in rows)


def test_twin_contrast_adds_the_pair_difference_error_over_the_shape_cells(tmp_path):
    from ovi.train.train import TWIN_DIFFERENCE
    cfg = TrainConfig(num_clips=12, curriculum_steps=0, p_uncond=0.0, threads=torch.get_num_threads())
    tr = Trainer(cfg, tmp_path)
    ds = Dataset(make_specs(cfg), tr.tokenizer, tr.vcodec, tr.acodec, twins=True)
    idx = torch.arange(min(3, len(ds.twin_of)))
    plain, _, _ = tr.loss(ds, idx, torch.Generator().manual_seed(2), model=Recorder(), twins=True)
    tr.cfg = dataclasses.replace(cfg, twin_contrast_weight=3.0)
    with_contrast, _, _ = tr.loss(ds, idx, torch.Generator().manual_seed(2), model=Recorder(), twins=True)
    # the Recorder predicts zeros and the pair shares its noise, so the target difference is -(own - other)
    # and the contrast is the mean of (own - other)^2 over the content entries where the pair differs
    own = tr.video_latents(ds.video[ds.twin_of[idx]])
    other = tr.video_latents(ds.twin_video[idx])
    content = tr.vcodec.content_channels
    diff = (own - other)[:, :content]
    shape_cells = diff.abs() > TWIN_DIFFERENCE
    assert 0 < shape_cells.float().mean() < 0.2  # the shape's few cells, not the whole clip
    expected = (diff[shape_cells] ** 2).mean()
    assert torch.allclose(with_contrast - plain, 3.0 * expected, rtol=1e-4)
    # a pair that does not differ adds nothing
    same = tr.twin_contrast(torch.zeros_like(own).repeat(2, 1, 1, 1, 1), torch.zeros_like(own).repeat(2, 1, 1, 1, 1),
                            own.repeat(2, 1, 1, 1, 1), tr.vfixed)
    assert float(same) == 0.0
