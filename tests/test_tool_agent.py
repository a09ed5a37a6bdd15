"""`runs/tool_agent.sh` in its quick mode (QUICK=1, toy sizes, under a minute on 2 cores): data, tokenizer,
pretrain, SFT, agent RL, the evaluation after each stage in-process and through `minimind serve` with the openai
client, and the report. The full run is a benchmark (runs/README.md), not a test."""

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_quick_run_goes_end_to_end_and_reports(tmp_path):
    out = tmp_path / "agent"
    run = subprocess.run(["bash", "runs/tool_agent.sh", str(out)], cwd=ROOT, env={**os.environ, "QUICK": "1"},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for stage in ("pretrain", "sft", "agent", "final"):
        assert (out / stage / "model.safetensors").is_file() and (out / stage / "tokenizer.json").is_file()
    tokenizer = json.loads((out / "final" / "tokenizer.json").read_text())
    assert "\\\\d{1,3}" in json.dumps(tokenizer["pre_tokenizer"])  # the run's own tokenizer: digits in groups of 3
    for name, n in (("eval_sft", 8), ("eval_agent", 8), ("eval_served", 4)):
        report = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))["tooluse"]
        assert report["all"]["questions"] == n and {"seen", "unseen", "en", "zh"} <= set(report)
        assert all(0.0 <= report["all"][k] <= 1.0 for k in ("well_formed", "right_call", "exact"))
    assert json.loads((out / "eval_served.json").read_text(encoding="utf-8"))["base_url"].startswith("http://")
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "| after SFT (in-process) | 8 |" in text and "| after agent RL, served" in text
    times = dict(line.split() for line in (out / "times.txt").read_text().splitlines())
    assert {"data", "tokenizer", "pretrain", "sft", "agent", "eval_sft", "eval_agent", "eval_served"} <= set(times)
    assert f"| **total** | **{sum(map(int, times.values()))}** |" in text
    assert "=== report:" in run.stdout and "Epoch [" in run.stdout  # progress shown as it goes
