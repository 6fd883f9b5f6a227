"""`ovi bench queue`: the records carry the pinned fields, for both stores and both runner counts."""

import argparse
import json

from ovi.commands.bench import add_bench_parser


def test_bench_queue_json_lines(tmp_path, capsys, pg_server):
    parser = argparse.ArgumentParser(prog="ovi")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "queue.jsonl"
    args = parser.parse_args(["bench", "queue", "--json", "--submits", "100", "--claims", "40",
                              "--batch", "20", "--runners", "1,4", "--postgres", pg_server.url(),
                              "--dir", str(tmp_path), "--out", str(out)])
    assert args.func(args) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["config"], r["runners"]) for r in records] == [
        ("sqlite-wal-normal", 1), ("sqlite-wal-normal", 4), ("sqlite-wal-full", 1),
        ("sqlite-wal-full", 4), ("postgres", 1), ("postgres", 4)]
    for r in records:
        assert r["bench"] == "queue" and r["world_size"] == 1
        assert r["submits_per_second"] > 0 and r["claim_latency_seconds"] > 0
        assert r["claims_per_second"] > 0
        assert r["claims"] == 40  # every timed claim got a job: none lost or taken twice
    assert [json.loads(line) for line in out.read_text().splitlines()] == records
    # The scratch databases are gone again.
    import psycopg

    with psycopg.connect(pg_server.url()) as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database")]
    assert not [n for n in names if n.startswith("ovi_bench_")]
