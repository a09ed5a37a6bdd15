"""OUT/report.md of `runs/tool_agent.sh OUT`: the evaluations after each stage, each stage's wall time, the machine
and the settings (read from what the run wrote: times.txt, eval_*.json, each model's args.json)."""

import json
import platform
import sys
from pathlib import Path

import torch

STAGES = [("eval_sft", "after SFT (in-process)"), ("eval_agent", "after agent RL (in-process)"),
          ("eval_served", "after agent RL, served (minimind serve + openai client)")]
KEYS = ["all", "seen", "unseen", "en", "zh"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(out: Path) -> str:
    times = dict(line.split() for line in (out / "times.txt").read_text().splitlines() if line.strip())
    lines = ["# Calculator agent: report", "",
             f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
             f"Python {platform.python_version()}.", "",
             "## Exact final answers on held-out questions", "",
             "+ - * of 2-3 digit numbers, English and Chinese; \"unseen\": phrasings held out from training "
             "(`minimind/data/tooluse.py`). Well-formed: the first turn holds a tool call that parses; right call: "
             "to the calculator, with the right value; exact: the final answer's last number is the result.", "",
             "| stage | questions | " + " | ".join(f"exact ({k})" for k in KEYS) + " | well-formed | right call |",
             "|---|---|" + "---|" * (len(KEYS) + 2)]
    reports = {}
    for name, title in STAGES:
        path = out / f"{name}.json"
        if not path.exists():
            continue
        r = reports[name] = json.loads(path.read_text(encoding="utf-8"))["tooluse"]
        cells = [f"{r[k]['exact']:.1%}" if k in r else "-" for k in KEYS]
        lines.append(f"| {title} | {r['all']['questions']} | " + " | ".join(cells) +
                     f" | {r['all']['well_formed']:.1%} | {r['all']['right_call']:.1%} |")
    if "eval_sft" in reports and "eval_agent" in reports:
        gain = reports["eval_agent"]["all"]["exact"] - reports["eval_sft"]["all"]["exact"]
        lines += ["", f"Agent RL changed the exact-answer rate by {gain * 100:+.1f} points on the same questions."]
    lines += ["", "## Wall time", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds} |" for name, seconds in times.items()]
    lines += [f"| **total** | **{sum(int(s) for s in times.values())}** |", "", "## Settings", ""]
    config = out / "final" / "config.json"
    if config.exists():
        c = json.loads(config.read_text())
        lines.append("- model: " + ", ".join(f"{k} {c[k]}" for k in ("hidden_size", "num_hidden_layers",
                                                                      "num_attention_heads", "num_key_value_heads",
                                                                      "vocab_size") if k in c))
    for stage in ("pretrain", "sft", "agent"):
        args = out / stage / "args.json"
        if args.exists():
            a = json.loads(args.read_text())
            keep = ["max_seq_len", "batch_size", "max_steps", "learning_rate", "group_by_length", "num_generations",
                    "max_new_tokens", "max_turns", "reward", "beta"]
            lines.append(f"- {stage}: " + ", ".join(f"{k} {a[k]}" for k in keep if a.get(k) not in (None, "")))
    failures = reports.get("eval_served", reports.get("eval_agent", {})).get("failures", [])
    if failures:
        lines += ["", "## First wrong answers (final model)", ""]
        lines += [f"- {f['question']} -> call {json.dumps(f['call'], ensure_ascii=False)}, answer "
                  f"{f['final']!r} (right: {f['answer']})" for f in failures[:5]]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text, encoding="utf-8")
    return text


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
