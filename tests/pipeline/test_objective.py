"""The shared flow-matching maths (ovi.pipeline.objective): what the engine, the Trainer and LoRA
training each used to compute by hand."""

import pytest
import torch

import ovi
from ovi.model.configs import architecture
from ovi.pipeline.objective import (
    audio_tokens,
    masked_mse,
    noised,
    pin,
    shift_sigma,
    velocity_target,
    video_tokens,
)


def test_token_counts_are_the_models_sequence_lengths():
    engine_plan = ovi.Engine.from_config(ovi.load_config(None, sample_steps=1)).plan("A red circle moves up.")
    assert engine_plan.video_latent_shape == (48, 5, 16, 16)
    assert video_tokens(engine_plan.video_latent_shape) == 5 * 8 * 8 == engine_plan.vid_seq_len
    assert audio_tokens(engine_plan.audio_latent_shape) == 22 == engine_plan.audio_seq_len
    # the patch size the count assumes is every architecture's
    assert architecture("tiny_trained")[0]["patch_size"] == architecture("ovi")[0]["patch_size"] == [1, 2, 2]
    assert video_tokens((48, 31, 44, 80), (1, 2, 2)) == 31 * 22 * 40


def test_noising_target_and_the_euler_step_agree():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    x = noised(x0, eps, 0.3)
    v = velocity_target(x0, eps)
    torch.testing.assert_close(x - 0.3 * v, x0)   # one exact Euler step to sigma 0 recovers x0
    torch.testing.assert_close(noised(x0, eps, 1.0), eps)
    assert shift_sigma(0.5, 5.0) == 5 * 0.5 / (1 + 4 * 0.5) and shift_sigma(1.0, 3.0) == 1.0


def test_pinned_entries_are_written_in_and_left_out_of_the_loss():
    mask = torch.tensor([[True, False], [False, False]])
    fixed = (mask, torch.full((2, 2), 7.0))
    latent = torch.zeros(2, 2)
    assert pin(latent, fixed).tolist() == [[7.0, 0.0], [0.0, 0.0]] and pin(latent, None) is latent
    pred = torch.tensor([[100.0, 1.0], [2.0, 3.0]])
    assert masked_mse(pred, torch.zeros(2, 2), fixed).item() == pytest.approx((1 + 4 + 9) / 3)
    # a batch over the mask's shape: the mean over every free entry of every sample
    batch = torch.stack([pred, 2 * pred])
    assert masked_mse(batch, torch.zeros(2, 2, 2), fixed).item() == pytest.approx((14 + 56) / 6)
    assert masked_mse(pred, torch.zeros(2, 2), None).item() == pytest.approx((10000 + 14) / 4)
