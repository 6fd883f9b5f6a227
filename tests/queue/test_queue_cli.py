"""`ovi queue ...` handlers, through the same parser and exit-code mapping as `ovi`."""

import json

import pytest

from ovi.config import load_config
from ovi.queue import JobQueue


def ovi_queue(*argv: str) -> int:
    """`ovi queue ARGV` in-process, through the real `ovi` entry point."""
    from ovi.cli import main

    return main(["queue", *argv])


@pytest.fixture
def db(queue_url):
    return queue_url  # each store (conftest)


def _lines(capsys):
    return capsys.readouterr().out.strip().splitlines()


def test_submit_prints_the_id_and_list_json_prints_one_job_per_line(db, tmp_path, capsys):
    image = tmp_path / "cat.png"
    image.write_bytes(b"png")
    assert ovi_queue("submit", "--db", db, "--prompt", "a cat", "--seed", "3", "--steps", "4") == 0
    assert _lines(capsys) == ["1"]
    assert ovi_queue("submit", "--db", db, "--prompt", "a dog", "--mode", "i2v", "--image",
                     str(image), "--priority", "2", "--set", "sample_steps=4",
                     "--set", "solver_name=euler", "--height-width", "64x96",
                     "--lora", "a.safetensors:0.5", "--video-guidance-scale", "4.5") == 0
    assert _lines(capsys) == ["2"]
    assert ovi_queue("list", "--db", db, "--json") == 0
    jobs = [json.loads(line) for line in _lines(capsys)]
    assert [j["id"] for j in jobs] == [1, 2]
    assert jobs[0]["request"] == {"prompt": "a cat", "seed": 3, "steps": 4}
    assert jobs[1]["request"] == {
        "prompt": "a dog", "mode": "i2v", "image": str(image.resolve()),
        "steps": 4, "solver": "euler", "height_width": [64, 96],  # per-clip --set keys become fields
        "loras": [{"path": "a.safetensors", "weight": 0.5, "name": "a", "merge": True}],
        "video_guidance_scale": 4.5}
    assert jobs[1]["priority"] == 2
    assert ovi_queue("list", "--db", db, "--state", "queued") == 0
    assert [line.split()[0] for line in _lines(capsys)] == ["2", "1"]  # run order


def test_show_cancel_retry_move_pause_resume(db, capsys):
    for p in "abc":
        ovi_queue("submit", "--db", db, "--prompt", p)
    capsys.readouterr()
    assert ovi_queue("show", "--db", db, "2") == 0
    assert json.loads(capsys.readouterr().out)["request"] == {"prompt": "b"}
    assert ovi_queue("move", "--db", db, "3", "--before", "1") == 0
    assert "place 1 of 3" in capsys.readouterr().out
    assert ovi_queue("move", "--db", db, "1", "--priority", "5") == 0
    q = JobQueue(db)
    assert [j["id"] for j in q.list("queued")] == [1, 3, 2]
    assert ovi_queue("cancel", "--db", db, "2", "3") == 0
    assert [q.get(i)["state"] for i in (2, 3)] == ["cancelled", "cancelled"]
    assert ovi_queue("retry", "--db", db, "3") == 0
    assert q.get(3)["state"] == "queued"
    assert ovi_queue("pause", "--db", db) == 0 and q.paused
    assert ovi_queue("resume", "--db", db) == 0 and not q.paused
    q.close()


def test_bad_input_exits_2_with_a_reason(db, capsys):
    assert ovi_queue("submit", "--db", db, "--prompt", "  ") == 2
    assert ovi_queue("submit", "--db", db, "--prompt", "x", "--set", "novalue") == 2
    assert ovi_queue("submit", "--db", db, "--prompt", "x", "--height-width", "big") == 2
    assert ovi_queue("show", "--db", db, "99") == 2
    assert ovi_queue("cancel", "--db", db, "99") == 2
    assert ovi_queue("import-csv", "--db", db, "/no/such.csv") == 2
    assert ovi_queue("submit", "--db", db, "--prompt", "x", "--mode", "v2v") == 2  # checked by GenerateRequest
    assert "mode 'v2v': must be one of t2v, i2v, t2i2v" in capsys.readouterr().err


def test_import_csv_and_run_until_empty(db, tmp_path, capsys):
    csv_path = tmp_path / "prompts.csv"
    csv_path.write_text("text_prompt\nA cat sings\nA dog barks\n")
    assert ovi_queue("import-csv", "--db", db, str(csv_path), "--n-times", "3",
                     "--steps", "2") == 0
    assert "queued 6 jobs" in capsys.readouterr().out
    assert ovi_queue("run", "--db", db, "--until-empty", "--quiet",
                     "--engine-factory", "tests.queue.fakes:factory") == 0
    q = JobQueue(db)
    jobs = q.list()
    assert len(jobs) == 6 and all(j["state"] == "done" for j in jobs)
    seed = load_config().seed  # the embedded default config's
    assert [j["request"]["seed"] for j in jobs] == [seed, seed + 1, seed + 2] * 2
    assert "ran 6 jobs: 6 done" in capsys.readouterr().err
    q.close()
    assert ovi_queue("run", "--db", db, "--until-empty", "--engine-factory", "nocolon") == 2


def test_config_and_overrides_are_checked_at_submit(db, tmp_path, capsys):
    assert ovi_queue("submit", "--db", db, "--prompt", "x", "--set", "smaple_steps=2") == 2
    assert ovi_queue("submit", "--db", db, "--prompt", "x", "--config", "no_such_config") == 2
    assert ovi_queue("submit", "--db", db, "--prompt", "x", "--config", "tiny",
                     "--set", "sample_steps=3") == 0
    yaml_path = tmp_path / "my.yaml"
    yaml_path.write_text("sample_steps: 2\n")
    assert ovi_queue("submit", "--db", db, "--prompt", "y", "--config", str(yaml_path)) == 0
    q = JobQueue(db)
    first, second = q.list()
    assert first["request"]["config"] == "tiny"  # a shipped name stays a name
    assert first["request"]["steps"] == 3  # typed like `ovi generate --set`, mapped to the request field
    assert second["request"]["config"] == str(yaml_path.resolve())
    q.close()


def _foreign_sqlite(path):
    import sqlite3
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.execute("INSERT INTO notes VALUES ('mine')")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("make", [
    lambda p: p.write_text("name,age\nann,3\n"),
    lambda p: p.write_bytes(bytes(range(256)) * 16),
    _foreign_sqlite,
], ids=["csv", "binary", "other-sqlite"])
@pytest.mark.parametrize("command", [["list"], ["submit", "--prompt", "x"], ["run", "--until-empty"]])
def test_a_file_that_is_not_a_queue_database_is_refused_untouched(tmp_path, capsys, make, command):
    path = tmp_path / "data.db"
    make(path)
    before = path.read_bytes()
    assert ovi_queue(*command, "--db", str(path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a queue database" in err[0] and str(path) in err[0]
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.db"]  # no -wal / -shm left


def _subcommands(parser):
    import argparse
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def _flags(parser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings} - {"-h", "--help"}


def test_generate_and_queue_submit_share_their_per_clip_flags():
    import dataclasses

    from ovi.cli import build_parser
    from ovi.request import GenerateRequest

    commands = _subcommands(build_parser())
    generate, submit = commands["generate"], _subcommands(commands["queue"])["submit"]
    assert _flags(generate) - {"--quiet"} == _flags(submit) - {"--priority", "--db"}
    for field in dataclasses.fields(GenerateRequest):
        if field.name not in ("prompt", "config", "engine"):
            flag = "--" + (field.metadata["flag"] or field.name).replace("_", "-")
            assert flag in _flags(generate) and flag in _flags(submit), flag
