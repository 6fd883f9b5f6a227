"""Long synthetic sequences (wrap-around moves, repeating bounces with clicks, held tones), the windows
cut from them as the engine lays windows out, the shape score, and travel: checked against the data."""

import random

import numpy as np
import torch

from ovi.codecs.shapes import ShapesAudioCodec, ShapesVideoCodec
from ovi.pipeline.images import to_uint8_frames
from ovi.train import data, metrics

WINDOWS = 6


def _spec(combo, seed=0):
    return data.sample_spec(combo, random.Random(seed))


def _sequence_frames(spec):
    """The whole 6-window clip's frames (the engine's length: 17 + 5 x 16)."""
    return to_uint8_frames(torch.from_numpy(data.render_video(spec, frames=range(17 + (WINDOWS - 1) * 16))))


def test_a_linear_move_wraps_around_and_keeps_its_direction_in_every_window():
    for motion in ("left", "right", "up", "down"):
        spec = _spec(("red", "square", motion, "low"))
        video = _sequence_frames(spec)
        mask = metrics.object_mask(video)
        axis = 1 if motion in ("left", "right") else 0  # the mask's column (x) or row (y) axis
        # the object crosses the edge: some frame shows it on both sides at once, whole in area
        split = [f for f in range(len(mask)) if mask[f].any(axis=1 - axis)[[0, -1]].all()]
        assert split, motion
        areas = mask.reshape(len(mask), -1).sum(1)
        assert areas.min() > 0.95 * areas.max()
        track = metrics.centroid_track(mask)
        distance = metrics.travel(track, motion)
        assert abs(distance - spec.speed * (len(video) - 1)) < 2.0, (motion, distance)  # unwrapped: no jumps
        steps = np.linalg.norm(np.diff(track, axis=0), axis=1)
        assert steps.max() < spec.speed + 1.0
        for w in range(WINDOWS):
            window = video[16 * w: 16 * w + 17]
            assert metrics.measure(window, np.zeros(data.NUM_SAMPLES, np.float32)).motion == motion, (motion, w)


def test_window_zero_is_the_plain_clip_and_every_later_window_starts_from_the_previous_tail():
    vc, ac = ShapesVideoCodec(), ShapesAudioCodec()
    for combo in (("blue", "triangle", "left", "low"), ("yellow", "circle", "bounce", "high")):
        spec = _spec(combo, seed=3)
        v0, a0, k_v, k_a = data.encode_window(spec, 0, vc, ac)
        assert (k_v, k_a) == (0, 0)
        assert torch.equal(v0, vc.encode_content(torch.from_numpy(data.render_video(spec))))
        assert torch.equal(a0, ac.encode(torch.from_numpy(data.render_audio(spec, ac.CYCLES))))
        lay = data.sequence_layout(WINDOWS)
        prev_v, prev_a = v0, a0
        for w in range(1, WINDOWS):
            v, a, k_v, k_a = data.encode_window(spec, w, vc, ac)
            assert (k_v, k_a) == (lay.video_prefix[w], lay.audio_prefix[w]) and k_v == 1 and k_a >= 1
            assert v.shape == v0.shape and a.shape == a0.shape
            assert torch.equal(v[:, :k_v], prev_v[:, -k_v:])                 # the carried video latent
            assert torch.allclose(a[:k_a], prev_a[-k_a:], atol=1e-5)         # the carried audio tokens
            prev_v, prev_a = v, a


def test_bounces_repeat_with_a_click_at_every_contact_and_tones_hold():
    ac = ShapesAudioCodec()
    bounce = _spec(("green", "square", "bounce", "middle"))
    total = 17 + (WINDOWS - 1) * 16
    contacts = data.contact_frames(bounce, 0, total)
    assert contacts == list(range(8, total, 16))
    for w in range(WINDOWS):
        cut = data.sequence_window(w)
        clicks = data.click_latent_frames(bounce, cut.audio_start)
        window_contacts = [c for c in contacts
                           if cut.audio_start <= data.audio_token_of_frame(c) < cut.audio_start + data.AUDIO_LATENTS]
        assert clicks == [data.audio_token_of_frame(c) - cut.audio_start for c in window_contacts] and clicks
        heard = metrics.measure_clicks(data.render_audio(bounce, ac.CYCLES, cut.audio_start))
        assert len(heard) == len(clicks)
        assert all(abs(h - k * 512 / 16000 * 24) < 1e-6 for h, k in zip(heard, clicks))
    tone = _spec(("green", "square", "left", "middle"))
    first = data.render_audio(tone, ac.CYCLES)
    for w in range(1, WINDOWS):
        assert np.array_equal(data.render_audio(tone, ac.CYCLES, data.sequence_window(w).audio_start), first)


def test_shape_score_ceilings_data_and_codec_tell_every_shape_apart():
    vc = ShapesVideoCodec()
    specs = data.held_out_specs(per_combo=2)
    for spec in specs:
        video = torch.from_numpy(data.render_video(spec))
        for frames in (to_uint8_frames(video), to_uint8_frames(vc.decode(vc.encode(video)))):
            assert metrics.measure_shape(metrics.object_mask(frames)) == spec.shape, spec
    # a shape cut by the frame's edge in every frame is not guessed
    edge = np.zeros((3, 32, 32), bool)
    edge[:, :10, :10] = True
    assert metrics.measure_shape(edge) is None


def test_score_reports_shape_and_travel():
    rng = random.Random(5)
    pairs = []
    for combo in data.HELD_OUT:
        spec = data.sample_spec(combo, rng)
        frames = to_uint8_frames(torch.from_numpy(data.render_video(spec)))
        m = metrics.measure(frames, data.render_audio(spec, ShapesAudioCodec.CYCLES))
        pairs.append((spec, m))
    out = metrics.score(pairs, data.NUM_FRAMES)
    assert out["shape_accuracy"] == 1.0 and abs(out["travel_ratio"] - 1.0) < 0.02
    # half the distance reads as half
    spec, m = next((s, m) for s, m in pairs if s.motion == "left")
    slow = np.asarray(m.track, dtype=np.float64)
    slow[:, 0] = slow[0, 0] + (slow[:, 0] - slow[0, 0]) / 2
    half = metrics.travel(slow, "left") / (spec.speed * (data.NUM_FRAMES - 1))
    assert abs(half - 0.5) < 0.02
    assert metrics.travel(slow, "right") < 0 and metrics.travel(slow, "bounce") is None
