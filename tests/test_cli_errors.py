"""Every CLI failure a user can cause is one line naming the problem and the fix, exit 2 (issue 20);
commands that only read create nothing; every `--set KEY=VALUE` takes effect or is refused by name."""

import os

import pytest
from PIL import Image

from ovi.cli import build_parser, main
from ovi.commands.generate import config_from_args, requests_from_args
from ovi.queue import JobQueue


def _ovi(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of `ovi ARGV` run in this process (argparse's exits included)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _one_line_error(code: int, err: str, *words: str) -> str:
    """Exit 2, no traceback, and one error line (after argparse's usage, if any) naming `words`."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert all(w in lines[0] for w in words), (words, lines[0])
    return lines[0]


@pytest.mark.parametrize("argv, words", [
    (["queue", "serve", "--port", "99999"], ["--port", "1..65535"]),
    (["queue", "serve", "--port", "-1"], ["--port"]),
    (["queue", "serve", "--max-upload-mb", "inf"], ["--max-upload-mb"]),
    (["queue", "run", "--heartbeat-timeout", "nan"], ["--heartbeat-timeout"]),
    (["queue", "submit", "--prompt", "x", "--priority", "9" * 30], ["--priority", "out of range"]),
    (["queue", "show", "\u0661"], ["id", "0-9"]),
    (["queue", "show", "\u00b2"], ["id"]),
    (["queue", "cancel", str(2**63)], ["ID", "out of range"]),
    (["queue", "move", "1", "--before", "+1"], ["--before"]),
    (["generate", "--seed", str(2**64)], ["seed", "18446744073709551615"]),
    (["generate", "--steps", "1_000"], ["--steps"]),
    (["generate", "--height-width", "\u00b2x64"], ["--height-width", "HxW"]),
])
def test_bad_numbers_are_one_line_exit_2(tmp_path, monkeypatch, capsys, argv, words):
    monkeypatch.chdir(tmp_path)
    _one_line_error(*_ovi(argv, capsys), *words)
    assert list(tmp_path.iterdir()) == []  # nothing was written


@pytest.mark.parametrize("command", [["list"], ["show", "1"], ["cancel", "1"], ["retry", "1"],
                                     ["move", "1", "--priority", "2"]])
def test_commands_on_existing_jobs_create_nothing(tmp_path, capsys, command):
    db = tmp_path / "missing" / "dir" / "q.db"
    _one_line_error(*_ovi(["queue", *command, "--db", str(db)], capsys), "--db", "no queue database")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["submit", "--prompt", "x"], ["list"], ["serve", "--port", "1"],
                                     ["run", "--until-empty"]])
def test_an_unusable_db_path_is_one_line(tmp_path, capsys, command):
    (tmp_path / "afile").write_text("")
    code, err = _ovi(["queue", *command, "--db", str(tmp_path / "afile" / "q.db")], capsys)
    _one_line_error(code, err, "--db")
    code, err = _ovi(["queue", *command, "--db", str(tmp_path)], capsys)
    _one_line_error(code, err, "--db", "is a folder")


def test_a_read_only_database_is_called_read_only(tmp_path, monkeypatch, capsys):
    db = tmp_path / "q.db"
    JobQueue(db).close()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(db) else real_access(p, mode))
    line = _one_line_error(*_ovi(["queue", "submit", "--prompt", "x", "--db", str(db)], capsys),
                           "read-only")
    assert "not a queue database" not in line


def test_generate_out_must_be_a_folder_that_can_be_made(tmp_path, tiny_ckpt, capsys):
    (tmp_path / "afile").write_text("")
    base = ["generate", "--quiet", "--steps", "1", "--set", "model_name=tiny", "--set", f"ckpt_dir={tiny_ckpt}"]
    _one_line_error(*_ovi([*base, "--out", str(tmp_path / "afile")], capsys), "--out", "is a file")
    _one_line_error(*_ovi([*base, "--out", str(tmp_path / "afile" / "sub")], capsys), "--out", "afile")
    _one_line_error(*_ovi([*base, "--out", "/proc/no/such/place"], capsys), "--out", "cannot create")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize("prompt, words", [
    ("x\udcff", ["prompt", "surrogate"]),          # what Python makes of the byte 0xff in argv
    ("a\x00b", ["prompt", "control character"]),
])
def test_a_prompt_that_is_not_text_is_one_line(tmp_path, monkeypatch, capsys, prompt, words):
    monkeypatch.chdir(tmp_path)
    _one_line_error(*_ovi(["generate", "--prompt", prompt], capsys), *words)
    _one_line_error(*_ovi(["queue", "submit", "--prompt", prompt, "--db", "q.db"], capsys), *words)
    assert JobQueue(tmp_path / "q.db").list() == []


# -- every --set KEY=VALUE takes effect --------------------------------------------------------------
def _generate_args(*argv):
    return build_parser().parse_args(["generate", *argv])


def _requests(*argv):
    from ovi.commands.generate import output_dir_from_args
    args = _generate_args(*argv)
    cfg = config_from_args(args)
    return requests_from_args(args, cfg), output_dir_from_args(args, cfg)


def test_set_text_prompt_is_the_prompt_or_the_prompt_file(tmp_path):
    requests, _ = _requests("--set", "text_prompt=a red ball bounces")
    assert [r.prompt for r in requests] == ["a red ball bounces"]
    csv = tmp_path / "prompts.csv"
    csv.write_text("text_prompt\nfirst prompt\nsecond prompt\n")
    requests, _ = _requests("--set", f"text_prompt={csv}")
    assert [r.prompt for r in requests] == ["first prompt", "second prompt"]
    with pytest.raises(Exception, match="given twice"):
        _requests("--prompt", "a", "--set", "text_prompt=b")


def test_queue_submit_and_import_csv_refuse_set_text_prompt(tmp_path, capsys):
    db = str(tmp_path / "q.db")
    _one_line_error(*_ovi(["queue", "submit", "--db", db, "--prompt", "a", "--set", "text_prompt=b"], capsys),
                    "text_prompt")
    (tmp_path / "p.csv").write_text("text_prompt\nrow\n")
    _one_line_error(*_ovi(["queue", "import-csv", str(tmp_path / "p.csv"), "--db", db, "--set",
                           "text_prompt=b"], capsys), "text_prompt")
    assert JobQueue(db).list() == []


def test_every_per_clip_set_key_takes_effect(tmp_path):
    image = tmp_path / "cat.png"
    Image.new("RGB", (64, 64)).save(image)
    expected = {  # config key -> (value as typed, what the request holds)
        "text_prompt": ("a dog barks", ("prompt", "a dog barks")),
        "video_negative_prompt": ("blur", ("negative_prompt", "blur")),
        "audio_negative_prompt": ("hum", ("audio_negative_prompt", "hum")),
        "sample_steps": ("3", ("steps", 3)),
        "solver_name": ("euler", ("solver", "euler")),
        "shift": ("3.5", ("shift", 3.5)),
        "video_guidance_scale": ("2", ("video_guidance_scale", 2.0)),
        "audio_guidance_scale": ("2.5", ("audio_guidance_scale", 2.5)),
        "slg_layer": ("1", ("slg_layer", 1)),
        "video_frame_height_width": ("[64, 96]", ("height_width", (64, 96))),
        "seed": ("12", ("seed", 12)),
        "lightning": ("true", ("lightning", True)),
        "lora": ("style.safetensors:0.5", ("loras", ({"path": "style.safetensors", "weight": 0.5,
                                                       "name": "style", "merge": True},))),
    }
    from ovi.request import CONFIG_KEYS
    covered = set(expected) | {"image_path", "mode", "each_example_n_times", "output_dir"}
    assert covered == set(CONFIG_KEYS.values())  # a new per-clip key needs a line here
    for key, (typed, (field, value)) in expected.items():
        requests, _ = _requests("--set", f"{key}={typed}")
        assert getattr(requests[0], field) == value, key
    requests, out = _requests("--set", "mode=i2v", "--set", f"image_path={image}", "--set",
                              "each_example_n_times=2", "--set", f"output_dir={tmp_path / 'clips'}")
    assert [r.mode for r in requests] == ["i2v", "i2v"] and requests[0].image == str(image)
    assert out == tmp_path / "clips"
    assert [r.seed for r in requests] == [requests[0].seed, requests[0].seed + 1]


def test_an_unknown_set_key_is_refused_by_name(capsys):
    _one_line_error(*_ovi(["generate", "--set", "sampel_steps=3"], capsys), "sampel_steps")


def test_a_prompt_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    csv = tmp_path / "prompts.csv"
    csv.write_bytes(b"text_prompt\n\xff\xfe caf\xe9\n")
    _one_line_error(*_ovi(["generate", "--prompt", str(csv)], capsys), "UTF-8")
    _one_line_error(*_ovi(["queue", "import-csv", str(csv), "--db", str(tmp_path / "q.db")], capsys), "UTF-8")
