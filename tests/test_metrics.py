"""Run tracking: `--report_to tensorboard` writes event files that the real `tensorboard` package reads back with the
scalars of metrics.jsonl; unknown targets are refused."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from minimind.cli.train import parse_args
from minimind.train.metrics import MetricsLog
from minimind.train.pretrain import run

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--hidden_size", "32", "--num_layers", "2", "--num_heads", "2", "--num_kv_heads", "1", "--max_seq_len", "32",
        "--batch_size", "4", "--log_interval", "2", "--eval_interval", "4", "--eval_batches", "2", "--epochs", "1",
        "--max_steps", "8", "--dtype", "fp32", "--save_steps", "0"]


def test_tensorboard_reads_back_the_scalars_a_run_wrote(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(300)),
                      encoding="utf-8")
    out = tmp_path / "run"
    run(parse_args([*TINY, "--data", str(corpus), "--output_dir", str(out), "--report_to", "tensorboard, none"]))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "lr", "eval_loss"} <= tags
    for tag in ("loss", "lr", "eval_loss"):
        want = [(r["step"], r[tag]) for r in records if tag in r]
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert len(want) >= 2 and [s for s, _ in got] == [s for s, _ in want], tag
        assert all(abs(g - w) <= 1e-6 * max(1.0, abs(w)) for (_, g), (_, w) in zip(got, want)), tag  # float32


def test_report_to_refuses_unknown_targets(tmp_path):
    with pytest.raises(ValueError, match="--report_to: unknown target 'mlflow'; use none, tensorboard or wandb"):
        MetricsLog(tmp_path, "tensorboard,mlflow", {})
