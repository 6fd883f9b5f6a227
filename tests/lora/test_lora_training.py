"""LoRA training on the tiny model: the flow-matching loss falls, the saved native file reproduces the
trained layers, and distillation brings a 4-step guidance-free student closer to a many-step guided teacher.
(Random tiny weights: these check the machinery; quality numbers need the trained tiny model.)"""

import pytest
import torch

from ovi.lora import LoRAManager
from ovi.train.lora import (
    Example,
    TrainableLoRA,
    euler_trajectory,
    flow_matching_loss,
    model_velocity,
    pinned,
    student_sigmas,
    train_distillation,
    train_flow_matching,
)
from tests.lora.files import load_tiny, snapshot


@pytest.fixture
def model(tiny_ckpt):
    return load_tiny(tiny_ckpt)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(48, 2, 4, 4, generator=g)  # 8 video tokens, 4 audio tokens: cheap steps
    audio = torch.randn(4, 20, generator=g)
    return video, audio, torch.randn(8, 64, generator=g), torch.randn(8, 64, generator=g)


def test_flow_matching_loss_falls_and_the_native_file_reproduces_the_trained_layers(model, tmp_path):
    base_weights = snapshot(model)
    video, audio, context, _ = _inputs()
    # A clip far from what the random model makes (a strong constant "colour" and "tone").
    example = Example(video=2.0 + 0.1 * video, audio=-1.5 + 0.0 * audio, context=context)
    g = torch.Generator().manual_seed(9)
    fixed = [(s, torch.randn(video.shape, generator=g), torch.randn(audio.shape, generator=g)) for s in (0.3, 0.6, 0.9)]

    def held_out_loss():
        with torch.no_grad():
            return sum(float(flow_matching_loss(model, example, s, nv, na, audio_weight=0.5).total)
                       for s, nv, na in fixed) / len(fixed)

    before = held_out_loss()
    lora = TrainableLoRA(model, rank=4, branch="both")
    assert held_out_loss() == pytest.approx(before, abs=1e-6)  # B starts at zero: the model is unchanged
    history = train_flow_matching(lora, [example], steps=15, lr=2e-2, audio_weight=0.5)
    after = held_out_loss()
    assert len(history.loss) == 15 and len(history.video) == len(history.audio) == 15
    assert after < 0.85 * before, (before, after)

    with torch.no_grad():
        trained = model_velocity(model, video, audio, 0.5, context)
    path = lora.save(tmp_path / "trained.safetensors", extra={"training": {"steps": 15}})
    lora.remove()
    assert all(torch.equal(v, base_weights[k]) for k, v in model.state_dict().items())
    manager = LoRAManager()
    manager.load_adapter("trained", path)
    record = manager.apply_adapter(model, "trained")
    assert record["format"] == "native" and record["ranks"] == [4] and record["layers"] == 60
    with torch.no_grad():
        reloaded = model_velocity(model, video, audio, 0.5, context)
    for got, want in zip(reloaded, trained):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_distillation_brings_the_few_step_student_closer_to_the_teacher(model):
    with torch.no_grad():  # random heads are near zero (std 0.02); give the velocities a trained model's scale
        for branch in (model.video_model, model.audio_model):
            branch.head.head.weight.mul_(30)
    video, audio, positive, negative = _inputs(1)

    def teacher(v, a, sigma):  # guided, two passes per step
        pv, pa = model_velocity(model, v, a, sigma, positive)
        nv, na = model_velocity(model, v, a, sigma, negative)
        return nv + 3.0 * (pv - nv), na + 3.0 * (pa - na)

    def student(v, a, sigma):  # one pass, no guidance
        return model_velocity(model, v, a, sigma, positive)

    sigmas = student_sigmas((1.0, 0.75, 0.5, 0.25), shift=5.0)
    states = euler_trajectory(teacher, video, audio, sigmas, substeps=2)  # an 8-step guided teacher

    def gap():
        sample = euler_trajectory(student, video, audio, sigmas)[-1]
        return sum(float(((s - t) ** 2).mean()) for s, t in zip(sample, states[-1]))

    before = gap()
    lora = TrainableLoRA(model, rank=4, branch="both")
    history = train_distillation(lora, [(states, student)], sigmas, steps=8, lr=5e-3)
    after = gap()
    assert history.loss[-1] < 0.5 * history.loss[0]
    assert after < 0.7 * before, (before, after)


def test_fixed_latent_entries_are_pinned_in_inputs_and_left_out_of_losses(model):
    """A codec's fixed entries (the trained tiny model's coordinate channels): the model always sees their
    values, whatever the noise there, and they count in no loss; a pinned trajectory keeps them."""
    video, audio, context, _ = _inputs(2)
    mask = torch.zeros_like(video, dtype=torch.bool)
    mask[12:] = True
    values = torch.linspace(-1, 1, video.numel()).view(video.shape)
    example = Example(video=video, audio=audio, context=context, video_fixed=(mask, values))
    g = torch.Generator().manual_seed(3)
    noise_v, noise_a = torch.randn(video.shape, generator=g), torch.randn(audio.shape, generator=g)
    other = torch.where(mask, 100 * torch.randn(video.shape, generator=g), noise_v)  # differs only where fixed
    with torch.no_grad():
        first = flow_matching_loss(model, example, 0.6, noise_v, noise_a)
        second = flow_matching_loss(model, example, 0.6, other, noise_a)
    assert first.video == second.video and first.audio == second.audio
    velocity = pinned(lambda v, a, s: model_velocity(model, v, a, s, context), (mask, values), None)
    end_video, _ = euler_trajectory(velocity, torch.where(mask, values, noise_v), noise_a, [0.9, 0.5, 0.0])[-1]
    assert torch.equal(end_video[mask], values[mask]) and not torch.equal(end_video[~mask], noise_v[~mask])


def test_sharpen_steps_noise_the_blurred_clip_and_target_the_clip(model):
    """LoRA training's sharpen steps are the base Trainer's: x_t from the clip moved toward its spatial blur,
    the target the velocity back to the clip itself."""
    from ovi.pipeline.objective import masked_mse, noised, spatial_blur

    video, audio, context, _ = _inputs(4)
    example = Example(video=video, audio=audio, context=context)
    g = torch.Generator().manual_seed(5)
    noise_v, noise_a = torch.randn(video.shape, generator=g), torch.randn(audio.shape, generator=g)
    with torch.no_grad():
        got = flow_matching_loss(model, example, 0.4, noise_v, noise_a, sharpen=0.7)
        plain = flow_matching_loss(model, example, 0.4, noise_v, noise_a)
        source = spatial_blur(video, 0.7)
        x_t = noised(source, noise_v, 0.4)
        pv, _ = model_velocity(model, x_t, noised(audio, noise_a, 0.4), 0.4, context)
        expected = float(masked_mse(pv, (x_t - video) / 0.4, None))
    assert got.video == pytest.approx(expected, rel=1e-5) and got.video != pytest.approx(plain.video, rel=1e-3)
    lora = TrainableLoRA(model, rank=4, branch="video")
    history = train_flow_matching(lora, [example], steps=4, lr=1e-2, sharpen_frac=1.0)
    assert len(history.loss) == 4 and all(torch.isfinite(torch.tensor(history.loss)))
    lora.remove()
