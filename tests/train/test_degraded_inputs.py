"""Degraded-input batches (`shape_blend_frac`, `sharpen_frac`): x_t is built from a clip mixed with its
shape twin, or blurred, and the target is the velocity that leads from that x_t to the clip itself."""

import json

import pytest
import torch

from ovi.pipeline.objective import noised, pin
from ovi.train.train import Dataset, TrainConfig, Trainer, continuation_windows, make_specs, train
from tests.train.fakes import Recorder


def zero_prediction_loss(tr, xv, x0, sigma):
    """The video loss of a model predicting zeros: the mean square of the target (x_t - x0) / σ over the
    content channels."""
    target = (xv - x0) / sigma.view(-1, 1, 1, 1, 1)
    keep = ~tr.vfixed[0]
    return (target ** 2 * keep).sum() / keep.expand_as(target).sum()


def test_blended_inputs_mix_each_clip_with_its_twin_and_target_the_clip_itself(tmp_path):
    cfg = TrainConfig(num_clips=12, curriculum_steps=0, p_uncond=0.5, shape_blend_max=0.6,
                      threads=torch.get_num_threads())
    tr = Trainer(cfg, tmp_path)
    tr.t5.eval()
    ds = Dataset(make_specs(cfg), tr.tokenizer, tr.vcodec, tr.acodec, twins=True)
    idx = torch.arange(min(4, len(ds.twin_of)))
    n = len(idx)
    own = tr.video_latents(ds.video[ds.twin_of[idx]])
    other = tr.video_latents(ds.twin_video[idx])
    with torch.no_grad():
        negative = tr.encode_text(tr.t5, tr.neg_ids, tr.neg_mask)[0]
    rec = Recorder()
    mixed_some = False
    for seed in range(6):
        lv, _, sigma = tr.loss(ds, idx, torch.Generator().manual_seed(seed), model=rec, twins=True, blend=True)
        assert ((sigma >= cfg.degraded_sigma_min) & (sigma <= cfg.degraded_sigma_max)).all()
        s = sigma[:n].view(n, 1, 1, 1, 1)
        # one ε per pair: x_t(own) - x_t(twin) = (1 - σ)(1 - 2α)(own - twin), α the twin's share in the mix
        diff = rec.xv[:n] - rec.xv[n:]
        scale = (diff * (own - other)).sum((1, 2, 3, 4)) / ((1 - s) * (own - other) ** 2).sum((1, 2, 3, 4))
        alpha = (1 - scale) / 2
        dropped = torch.tensor([v.shape == negative.shape and torch.allclose(v, negative, atol=1e-5)
                                for v in rec.vctx[:n]])
        assert torch.allclose(alpha[dropped], torch.zeros(()), atol=1e-4)  # no word: a plain input
        assert ((alpha >= -1e-4) & (alpha <= cfg.shape_blend_max + 1e-4)).all()
        mixed_some |= bool((alpha[~dropped] > 0.01).any())
        # the target leads from the mixed x_t to each clip's own x0
        assert torch.allclose(lv, zero_prediction_loss(tr, rec.xv, torch.cat([own, other]), sigma), rtol=1e-4)
    assert mixed_some
    with pytest.raises(ValueError, match="twin batch"):
        tr.loss(ds, idx, torch.Generator().manual_seed(0), model=rec, blend=True)  # no twins: no pair to mix


def test_blurred_moves_content_toward_its_3x3_binomial_blur_and_leaves_fixed_channels(tmp_path):
    tr = Trainer(TrainConfig(threads=torch.get_num_threads()), tmp_path)
    x = tr.video_latents(torch.zeros(1, 12, *tr.vshape[1:]))
    x[0, 3, 2, 5, 6] = 16.0  # one bright cell
    full = tr.blurred(x, torch.ones(1, 1, 1, 1, 1))
    assert torch.equal(full[:, 12:], x[:, 12:])
    assert torch.allclose(full[0, 3, 2, 4:7, 5:8], torch.tensor([[1., 2., 1.], [2., 4., 2.], [1., 2., 1.]]))
    assert full[0, 3, 2].sum() == 16.0 and full[0, 3, [1, 3]].abs().sum() == 0  # spatial only, mass kept
    assert torch.allclose(tr.blurred(x, torch.full((1, 1, 1, 1, 1), 0.5)), (x + full) / 2)
    assert torch.equal(tr.blurred(x, torch.zeros(1, 1, 1, 1, 1)), x)


def test_sharpen_batches_noise_a_blurred_clip_and_target_the_sharp_one(tmp_path):
    cfg = TrainConfig(num_clips=8, curriculum_steps=0, sharpen_max=1.0, threads=torch.get_num_threads())
    tr = Trainer(cfg, tmp_path)
    ds = Dataset(make_specs(cfg), tr.tokenizer, tr.vcodec, tr.acodec)
    idx = torch.arange(4)
    x0 = tr.video_latents(ds.video[idx])
    rec = Recorder()
    lv, _, sigma = tr.loss(ds, idx, torch.Generator().manual_seed(3), model=rec, sharpen=True)
    assert ((sigma >= cfg.degraded_sigma_min) & (sigma <= cfg.degraded_sigma_max)).all()
    # replay the loss's draws (σ, then the video noise) to recover the clean input x_t was made from:
    # x0 moved some way β in [0, 1] toward its blur, per clip, and the target leads back to x0 itself
    g = torch.Generator().manual_seed(3)
    lo, hi = cfg.degraded_sigma_min, cfg.degraded_sigma_max
    assert torch.allclose(sigma, lo + (hi - lo) * torch.rand(4, generator=g))
    noise = torch.randn(x0.shape, generator=g)
    s = sigma.view(-1, 1, 1, 1, 1)
    source = (rec.xv - s * noise) / (1 - s)
    step, toward = (source - x0)[:, :12], (tr.blurred(x0, torch.ones(4, 1, 1, 1, 1)) - x0)[:, :12]
    beta = (step * toward).sum((1, 2, 3, 4)) / (toward ** 2).sum((1, 2, 3, 4))
    assert ((beta >= 0) & (beta <= 1)).all() and (beta > 0.05).any()
    assert torch.allclose(step, beta.view(-1, 1, 1, 1, 1) * toward, atol=1e-3)
    assert torch.allclose(lv, zero_prediction_loss(tr, rec.xv, x0, sigma), rtol=1e-4)
    lv_plain, _, _ = tr.loss(ds, idx, torch.Generator().manual_seed(3), model=rec, sharpen=False)
    assert not torch.allclose(lv, lv_plain)


@pytest.mark.parametrize("blur_prefix", [False, True])
def test_sharpen_prefix_holds_a_continuation_windows_carried_frames_blurred(tmp_path, blur_prefix):
    cfg = TrainConfig(num_clips=6, curriculum_steps=0, prefix_frac=1.0, sequence_windows=3, sharpen_max=1.0,
                      sharpen_prefix=blur_prefix, threads=torch.get_num_threads())
    tr = Trainer(cfg, tmp_path)
    specs = make_specs(cfg)
    ds = Dataset(specs, tr.tokenizer, tr.vcodec, tr.acodec, continuation_windows(cfg, len(specs)))
    prefix = max(ds.prefix_groups, key=lambda k: len(ds.prefix_groups[k]))
    idx = ds.prefix_groups[prefix][:2]
    x0 = tr.video_latents(ds.cont_video[idx])
    rec = Recorder()
    k_v = prefix[0]
    lv, _, sigma = tr.loss(ds, idx, torch.Generator().manual_seed(5), model=rec, prefix=prefix, sharpen=True)
    carried = rec.xv[:, :12, :k_v]
    if not blur_prefix:  # the plain form: the carried frames are the sharp clip's
        assert torch.equal(carried, x0[:, :12, :k_v])
        return
    # replay the draws (σ, video noise, audio noise, dropout, then β) to get each clip's blur strength
    g = torch.Generator().manual_seed(5)
    torch.rand(2, generator=g), torch.randn(x0.shape, generator=g)
    torch.randn(ds.cont_audio[idx].shape, generator=g), torch.rand(2, generator=g)
    beta = cfg.sharpen_max * torch.rand(2, generator=g)
    expected = tr.blurred(x0, beta.view(2, 1, 1, 1, 1))[:, :12, :k_v]
    assert (beta > 0.05).any() and not torch.allclose(carried, x0[:, :12, :k_v], atol=1e-3)
    assert torch.allclose(carried, expected, atol=1e-5)  # held clean, at the blur the rest was noised from
    # the carried frames stay out of the loss: the target is the velocity back to the sharp clip elsewhere
    keep = ~tr.vfixed[0].clone()
    keep[:, :k_v] = False
    s = sigma.view(-1, 1, 1, 1, 1)
    target = (rec.xv - x0) / s
    assert torch.allclose(lv, (target ** 2 * keep).sum() / keep.expand_as(target).sum(), rtol=1e-4)


def test_self_correct_batches_noise_the_models_own_estimate_and_target_the_clip(tmp_path):
    cfg = TrainConfig(num_clips=8, curriculum_steps=0, threads=torch.get_num_threads())
    tr = Trainer(cfg, tmp_path)
    ds = Dataset(make_specs(cfg), tr.tokenizer, tr.vcodec, tr.acodec)
    idx = torch.arange(4)
    x0 = tr.video_latents(ds.video[idx])
    rec = Recorder()  # predicts v = 0, so its one-step x0 estimate is the noisier input itself
    lv, _, sigma = tr.loss(ds, idx, torch.Generator().manual_seed(4), model=rec, self_correct=True)
    # replay the draws: σ, video and audio noise, dropout, then the estimate's σ_hi and its noise
    g = torch.Generator().manual_seed(4)
    lo, hi = cfg.degraded_sigma_min, cfg.degraded_sigma_max
    assert torch.allclose(sigma, lo + (hi - lo) * torch.rand(4, generator=g))
    noise = torch.randn(x0.shape, generator=g)
    torch.randn(ds.audio[idx].shape, generator=g), torch.rand(4, generator=g)
    high = sigma + (1 - sigma) * torch.rand(4, generator=g)
    assert ((high >= sigma) & (high <= 1)).all() and (high > sigma + 0.01).any()
    estimate = pin(noised(x0, torch.randn(x0.shape, generator=g), high.view(-1, 1, 1, 1, 1)), tr.vfixed)
    s = sigma.view(-1, 1, 1, 1, 1)
    assert torch.allclose(rec.xv, pin(noised(estimate, noise, s), tr.vfixed), atol=1e-5)
    assert torch.allclose(rec.t, sigma * 1000.0)  # the last call is the trained one, at σ
    assert torch.allclose(lv, zero_prediction_loss(tr, rec.xv, x0, sigma), rtol=1e-4)  # back to the clip itself
    with pytest.raises(ValueError, match="own estimate"):
        tr.loss(ds, idx, torch.Generator().manual_seed(4), model=rec, self_correct=True, sharpen=True)


def test_a_short_run_with_self_correct_batches_logs_them(tmp_path):
    cfg = TrainConfig(num_clips=8, steps=3, batch=4, warmup=1, eval_every=0, ckpt_every=1000, curriculum_steps=0,
                      self_correct_frac=1.0, threads=torch.get_num_threads())
    train(cfg, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "loss.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["self_correct"] and not r["sharpen"] for r in rows)


def test_a_short_run_with_degraded_batches_logs_them(tmp_path):
    cfg = TrainConfig(num_clips=12, steps=6, batch=4, warmup=1, eval_every=0, ckpt_every=1000, curriculum_steps=0,
                      shape_twin_frac=1.0, shape_blend_frac=1.0, sharpen_frac=0.5, threads=torch.get_num_threads())
    train(cfg, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "loss.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["twins"] and r["blend"] for r in rows)
    assert {r["sharpen"] for r in rows} == {True, False}
