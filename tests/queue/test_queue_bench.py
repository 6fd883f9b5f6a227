"""`ovi bench queue`: the records carry the pinned fields."""

import argparse
import json

from ovi.commands.bench import add_bench_parser


def test_bench_queue_json_lines(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="ovi")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "queue.jsonl"
    args = parser.parse_args(["bench", "queue", "--json", "--submits", "200", "--claims", "50",
                              "--batch", "50", "--dir", str(tmp_path), "--out", str(out)])
    assert args.func(args) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["config"] for r in records] == ["sqlite-wal-normal", "sqlite-wal-full"]
    for r in records:
        assert r["bench"] == "queue" and r["world_size"] == 1
        assert r["submits_per_second"] > 0 and r["claim_latency_seconds"] > 0
        assert r["claims"] == 50
    assert [json.loads(line) for line in out.read_text().splitlines()] == records
