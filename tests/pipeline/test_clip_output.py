"""ovi.pipeline.output: mp4/wav/json/latents of a Clip, atomic writes, probe_media."""

import json
import os
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ovi.pipeline import output
from ovi.pipeline.output import Clip, probe_media

FPS, SR = 24, 16000


def tone_clip(frames=17, height=96, width=128, seconds=0.708, **kw):
    rng = np.random.default_rng(0)
    video = np.zeros((frames, height, width, 3), np.uint8)
    for i in range(frames):  # a moving bright bar on noise, so frames differ
        video[i] = rng.integers(0, 60, (height, width, 3))
        video[i, :, (i * 7) % width:(i * 7) % width + 8] = 255
    t = np.arange(round(seconds * SR)) / SR
    audio = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    meta = {"prompt": "a bar moves", "seed": np.int64(103), "shift": np.float32(5.0),
            "ckpt": Path("/ckpts/Ovi"), "height_width": (height, width), "dtype": torch.bfloat16}
    return Clip(video=video, audio=audio, fps=FPS, sample_rate=SR, meta=meta, **kw)


def test_save_writes_playable_mp4_with_synced_aac(tmp_path):
    clip = tone_clip()
    paths = clip.save(tmp_path / "clip")
    assert paths == {k: tmp_path / f"clip.{k}" for k in ("mp4", "wav", "json")}
    info = probe_media(paths["mp4"])
    assert (info["video_codec"], info["audio_codec"]) == ("h264", "aac")
    assert (info["video_frames"], info["fps"], info["width"], info["height"]) == (17, 24.0, 128, 96)
    assert (info["sample_rate"], info["audio_channels"]) == (16000, 1)
    assert info["video_duration"] == pytest.approx(17 / 24, abs=1e-3)
    assert abs(info["audio_duration"] - info["video_duration"]) <= 1 / FPS
    assert sorted(os.listdir(tmp_path)) == ["clip.json", "clip.mp4", "clip.wav"]  # no temp files left


def test_mp4_audio_is_the_tone(tmp_path):
    import av
    path = tone_clip().save(tmp_path / "clip")["mp4"]
    with av.open(str(path)) as c:
        decoded = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    spectrum = np.abs(np.fft.rfft(decoded[:8192]))
    assert np.fft.rfftfreq(8192, 1 / SR)[spectrum.argmax()] == pytest.approx(440, abs=4)


def test_wav_is_16bit_pcm_of_the_audio(tmp_path):
    clip = tone_clip()
    with wave.open(str(clip.save(tmp_path / "clip")["wav"])) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SR)
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert len(pcm) == len(clip.audio)
    np.testing.assert_allclose(pcm / 32767, clip.audio, atol=1 / 32767)


def test_json_sidecar_has_meta_and_format(tmp_path):
    sidecar = json.loads(tone_clip().save(tmp_path / "clip")["json"].read_text())
    assert sidecar["prompt"] == "a bar moves" and sidecar["seed"] == 103 and sidecar["shift"] == 5.0
    assert sidecar["ckpt"] == "/ckpts/Ovi" and sidecar["height_width"] == [96, 128]
    assert sidecar["dtype"] == "torch.bfloat16"
    assert (sidecar["fps"], sidecar["sample_rate"], sidecar["frames"]) == (24, 16000, 17)


def test_latents_are_saved_only_when_asked(tmp_path):
    latents = {"video": torch.randn(48, 5, 8, 8), "audio": torch.randn(22, 20)}
    clip = tone_clip(latents=latents)
    assert "latents" not in clip.save(tmp_path / "a")
    paths = clip.save(tmp_path / "b", save_latents=True)
    assert paths["latents"] == tmp_path / "b.latents.safetensors"
    loaded = load_file(paths["latents"])
    assert set(loaded) == {"video", "audio"} and torch.equal(loaded["video"], latents["video"])
    with pytest.raises(ValueError, match="carries no latents"):
        tone_clip().save(tmp_path / "c", save_latents=True)


def test_stem_with_dots_and_new_folders(tmp_path):
    paths = tone_clip(frames=5).save(tmp_path / "out" / "deep" / "Hello._there_128x128_103_0")
    assert paths["mp4"].name == "Hello._there_128x128_103_0.mp4" and paths["mp4"].is_file()


def test_odd_sizes_are_padded_and_audio_is_fitted_and_clipped(tmp_path):
    clip = tone_clip(frames=9, height=33, width=17, seconds=2.0)  # audio longer than 9 frames
    clip.audio[:100] = 3.0  # out of range
    paths = clip.save(tmp_path / "odd")
    info = probe_media(paths["mp4"])
    assert (info["width"], info["height"], info["video_frames"]) == (18, 34, 9)
    assert abs(info["audio_duration"] - 9 / FPS) <= 1 / FPS
    with wave.open(str(paths["wav"])) as w:  # the wav keeps the full waveform, clipped
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert len(pcm) == 2 * SR and pcm.max() == 32767


def _assert_only(tmp_path, names):
    assert sorted(os.listdir(tmp_path)) == sorted(names)


def test_failing_muxer_leaves_no_files(tmp_path, monkeypatch):
    (tmp_path / "other.mp4").write_bytes(b"not ours")

    def broken_mux(self, path):
        Path(path).write_bytes(b"partial mp4")  # the muxer got part way
        raise OSError("disk full")

    monkeypatch.setattr(Clip, "_write_mp4", broken_mux)
    with pytest.raises(OSError, match="disk full"):
        tone_clip().save(tmp_path / "clip")
    _assert_only(tmp_path, ["other.mp4"])


def test_failure_after_some_files_were_written_leaves_no_files(tmp_path, monkeypatch):
    def broken_json(self, path):
        raise TypeError("meta not serialisable")

    monkeypatch.setattr(Clip, "_write_json", broken_json)
    with pytest.raises(TypeError):
        tone_clip().save(tmp_path / "clip")  # mp4 and wav temps were complete
    _assert_only(tmp_path, [])


def test_failure_while_renaming_removes_renamed_files(tmp_path, monkeypatch):
    real_replace, calls = os.replace, []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise PermissionError("locked")
        real_replace(src, dst)

    monkeypatch.setattr(output.os, "replace", flaky_replace)
    with pytest.raises(PermissionError):
        tone_clip().save(tmp_path / "clip")
    _assert_only(tmp_path, [])


def test_clip_rejects_wrong_video_layout():
    with pytest.raises(ValueError, match=r"uint8 \[frames, H, W, 3\], got float32 \[3, 8, 8\]"):
        Clip(np.zeros((3, 8, 8), np.float32), np.zeros(10), 24, 16000)
    with pytest.raises(ValueError, match="fps > 0"):
        Clip(np.zeros((1, 8, 8, 3), np.uint8), np.zeros(10), 0, 16000)
