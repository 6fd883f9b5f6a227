"""`ovi bench long`: its seam measurements on made-up tracks and sounds, and one small run of each method."""

import argparse

import numpy as np

from ovi.bench import long as bench_long


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
        assert r["shape_accuracy"] is None  # no shape score exists yet (ovi.train.metrics)
        assert (tmp_path / f"{r['method']}_2w_seams.png").is_file()
