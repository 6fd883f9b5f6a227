"""`ovi bench long`: its seam measurements on made-up tracks and sounds, and one small run of each method."""

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from ovi.bench import long as bench_long
from ovi.codecs.shapes import ShapesAudioCodec, ShapesVideoCodec
from ovi.pipeline.images import to_uint8_frames
from ovi.train import data


def test_seam_jump_ratio_is_one_for_a_steady_move_and_large_for_a_jump():
    steady = np.stack([np.arange(20) * 3.0, np.full(20, 64.0)], 1)
    assert abs(bench_long.seam_jump_ratio(steady, [10]) - 1.0) < 1e-9
    jumped = steady.copy()
    jumped[10:, 0] -= 60  # the object restarts 60 px back at the seam
    assert bench_long.seam_jump_ratio(jumped, [10]) > 15
    assert bench_long.seam_jump_ratio(np.full((20, 2), np.nan), [10]) is None  # no object: no figure


def test_audio_seam_db_sees_a_level_step_at_the_seam_only():
    sr, fps = 16000, 24
    t = np.arange(sr) / sr
    tone = 0.3 * np.sin(2 * np.pi * 437.5 * t)
    seam_db, within = bench_long.audio_seam_db(tone, [12], fps, sr)
    assert seam_db < 0.1 and within < 0.1
    stepped = tone.copy()
    stepped[round(12 / fps * sr / 512) * 512:] *= 0.5  # -6 dB from the audio frame boundary nearest the seam
    seam_db, within = bench_long.audio_seam_db(stepped, [12], fps, sr)
    assert abs(seam_db - 6.02) < 0.1 and within < 0.1


def test_one_small_run_of_each_method_yields_the_pinned_fields(tmp_path):
    args = argparse.Namespace(config=None, windows="2", methods="ours,independent,last_frame", limit=1, seed=0,
                              extend_turn=True,
                              out_dir=str(tmp_path), set=["sample_steps=2"])
    *rows, turn = list(bench_long.run(args))
    assert [r["method"] for r in rows] == ["ours", "independent", "last_frame"]
    assert turn["kind"] == "extend_turn" and turn["n_clips"] == 1  # the first held-out prompt moves left
    assert 0 <= turn["turn_accuracy"] <= 1 and (tmp_path / "extend_turn_seams.png").is_file()
    for r in rows:
        assert {"method", "windows", "duration_s", "direction_accuracy_per_window", "color_accuracy",
                "pitch_accuracy", "shape_accuracy", "seam_jump_ratio", "audio_seam_db", "bounce_sync_frames",
                "seconds"} <= set(r)
        assert r["windows"] == 2 and len(r["direction_accuracy_per_window"]) == 2
        assert r["duration_s"] == 33 / 24  # 17 frames + 16 new frames, every method the same length
        assert 0 <= r["shape_accuracy"] <= 1
        sheet = tmp_path / f"{r['method']}_2w_seams.png"
        assert sheet.is_file() and Image.open(sheet).size == (2 * 66, 64 + 14 + 2)  # 2 half-size frames, 1 clip


def _data_long_clip(spec, windows):
    """A `windows`-window clip as a perfect model would make it: each window's latents encoded from the
    data's sequence, stitched as denoise_windows stitches (each window's carried prefix dropped), the
    whole sequence decoded once by the codecs -> (frames, audio, seams)."""
    vc, ac = ShapesVideoCodec(), ShapesAudioCodec()
    video, audio = [], []
    for w in range(windows):
        content, tokens, k_v, k_a = data.encode_window(spec, w, vc, ac)
        video.append(content[:, k_v:])
        audio.append(tokens[k_a:])
    frames = to_uint8_frames(vc.decode(vc.assemble(torch.cat(video, 1))))
    return frames, ac.decode(torch.cat(audio)).numpy(), data.sequence_layout(windows).seams


@pytest.mark.parametrize("windows", [3, 6])
def test_the_data_continued_across_windows_meets_every_goal(windows):
    """The bench's ceiling: the training data's own long sequences, through the codecs, score what issue
    18 asks of the model (direction, colour, pitch, shape in every window, no seam jump, no audio step,
    clicks in sync), wrap-arounds included."""
    rows = []
    for spec in data.held_out_specs():
        frames, audio, seams = _data_long_clip(spec, windows)
        assert len(frames) == 17 + 16 * (windows - 1) and seams == [17 + 16 * k for k in range(windows - 1)]
        rows.append(bench_long.measure_long(spec, frames, audio, seams, data.FPS, data.SAMPLE_RATE))
    out = bench_long.summarize(rows, windows)
    assert out["direction_accuracy_per_window"] == [1.0] * windows
    assert out["color_accuracy"] == out["pitch_accuracy"] == out["shape_accuracy"] == 1.0
    assert out["seam_jump_ratio"] < 1.5
    assert abs(out["audio_seam_db"] - out["audio_step_db_within"]) < 1.0
    assert out["bounce_sync_frames"] <= 1.0
