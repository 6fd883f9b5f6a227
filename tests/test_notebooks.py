"""The batch notebook as a papermill job: parameters in, mp4s and a results table out."""

import csv
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_papermill_batch_generate_writes_clips_and_a_results_table(tmp_path):
    out = tmp_path / "batch"
    papermill = Path(sys.executable).parent / "papermill"
    result = subprocess.run(
        [str(papermill), str(REPO / "notebooks" / "batch_generate.ipynb"), str(tmp_path / "run.ipynb"),
         "-p", "out_dir", str(out), "-p", "n_per_prompt", "2", "-p", "seed", "11",
         "-y", "prompts: ['A green triangle moves right. <AUDCAP>a middle tone<ENDAUDCAP>']",
         "-y", "overrides: {sample_steps: 2}", "--cwd", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["state"] for r in rows] == ["done", "done"] and [r["seed"] for r in rows] == ["11", "12"]
    assert {r["steps"] for r in rows} == {"2"}
    for row in rows:
        assert Path(row["mp4"]).is_file() and Path(row["mp4"]).read_bytes()[4:8] == b"ftyp"
