"""The benchmark suite's CPU smoke run: it runs the same code as on the GPU and writes every field (not any speed)."""

import json
import os
import subprocess
import sys

from conftest import REPO


def test_suite_tiny_writes_json_table_and_heat_map(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(REPO / "bench" / "suite.py"), "--tiny", "--warmup", "0", "--reps", "1",
                    "--out", str(tmp_path)], check=True, env=env, cwd=REPO, capture_output=True, text=True)
    [result_file] = tmp_path.glob("cpu-*-suite_tiny.json")
    result = json.loads(result_file.read_text())
    assert result["prefill"]["tok_s"] > 0 and result["ar"]["static"]["cuda_graph"] is False
    assert all(result["ar"][k]["ms_per_token"] > 0 for k in ("static", "generate"))
    grid = {(r["N"], r["K"], r["euler_steps"]) for r in result["cycles"]}
    assert grid == {(n, k, s) for n in (1, 4) for k in (8, 32) for s in (1, 2)}
    for row in result["cycles"]:
        assert row["cycle_ms"] == row["draft_ms"] + row["verify_ms"] + row["advance_ms"]
        ar_ms = min(v["ms_per_token"] for v in result["ar"].values())
        assert abs(row["break_even_tau"] - row["cycle_ms"] / ar_ms) < 1e-9
    assert result["verify_paths"]["shared_state_ms"] > 0 and result["verify_paths"]["rerun_prefix_ms"] > 0
    table = result_file.with_suffix(".md").read_text()
    assert table.count("\n| ") == 1 + len(grid)  # header + one row per grid point
    assert result_file.with_suffix(".png").stat().st_size > 1000
