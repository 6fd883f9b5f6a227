"""`ovi generate` end to end: playable mp4 with sound, csv batches, and exit 2 with nothing written."""

import csv
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from ovi.cli import main
from ovi.pipeline.output import probe_media


def _run(args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "ovi.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_generate_with_no_config_writes_a_playable_mp4_with_audio(tmp_path):
    result = _run(["generate", "--quiet"], cwd=tmp_path)  # the embedded default, from a fresh directory
    assert result.returncode == 0, result.stderr
    mp4s = list((tmp_path / "outputs").glob("*.mp4"))
    assert len(mp4s) == 1
    info = probe_media(mp4s[0])
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert info["video_frames"] == 17 and info["fps"] == 24 and info["sample_rate"] == 16000
    assert abs(info["audio_duration"] - info["video_duration"]) < 1 / 24
    stem = mp4s[0].with_suffix("")
    assert stem.with_suffix(".wav").is_file() and stem.with_suffix(".json").is_file()


def test_csv_batch_with_tags_and_save_latents(tmp_path, tiny_ckpt):
    prompts = tmp_path / "prompts.csv"
    with open(prompts, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text_prompt"])
        w.writerow(["<S>Hello there<E> a man speaks. <AUDCAP>Clear male voice<ENDAUDCAP>"])
        w.writerow(["Rain on a window. <AUDCAP>Soft rain<ENDAUDCAP>"])
    out = tmp_path / "out"
    code = main(["generate", "--prompt", str(prompts), "--set", "model_name=tiny", "--set", f"ckpt_dir={tiny_ckpt}", "--steps", "2",
                 "--out", str(out), "--save-latents", "--quiet", "--set", "each_example_n_times=2"])
    assert code == 0
    assert len(list(out.glob("*.mp4"))) == 4
    latents = sorted(out.glob("*.latents.safetensors"))
    assert len(latents) == 4
    assert set(load_file(str(latents[0]))) == {"video", "audio"}


@pytest.mark.parametrize("args, message", [
    (["--set", "sampl_steps=3"], "did you mean 'sample_steps'"),
    (["--mode", "v2v"], "mode"),
    (["--mode", "i2v", "--image", "missing.png"], "missing.png"),
    (["--set", "video_frame_height_width=[100, 128]"], "multiple of 32"),
    (["--steps", "0"], "sample_steps"),
    (["--set", "audio_guidance_scale=-2"], "audio_guidance_scale"),
])
def test_bad_input_exits_2_and_writes_no_clip(tmp_path, tiny_ckpt, capsys, args, message):
    out = tmp_path / "out"
    code = main(["generate", "--quiet", "--set", "model_name=tiny", "--set", f"ckpt_dir={tiny_ckpt}", "--out", str(out), *args])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists() or not any(out.iterdir())


def test_corrupt_checkpoint_exits_2(tmp_path, tiny_ckpt, capsys):
    import shutil
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    f = ckpt / "Ovi" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    code = main(["generate", "--quiet", "--set", "model_name=tiny", "--set", f"ckpt_dir={ckpt}", "--out", str(tmp_path / "out")])
    assert code == 2 and "model.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
