import subprocess
import sys

from minimind import MiniMindForCausalLM, preset
from minimind.cli import main
from minimind.info import parameter_counts


def test_info_preset_reports_components_and_memory(capsys):
    main(["info", "small"])
    out = capsys.readouterr().out
    assert "25,829,888" in out and "attention" in out and "ffn" in out and "bf16" in out
    assert "98.5 MiB" in out  # 25.8M params * 4 bytes


def test_info_moe_reports_active_parameters():
    counts = parameter_counts(preset("small-moe"))
    dense = parameter_counts(preset("small"))
    assert counts["routed experts"] == 8 * dense["ffn"] and counts["shared experts"] == dense["ffn"]
    assert counts["active"] == counts["total"] - counts["routed experts"] * 6 // 8


def test_info_model_directory(tmp_path, capsys):
    model = MiniMindForCausalLM(preset("tiny"))
    model.save_pretrained(tmp_path)
    main(["info", str(tmp_path)])
    total = sum(p.numel() for p in model.parameters())
    assert f"{total:,}" in capsys.readouterr().out


def test_info_bad_path_is_one_clear_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "minimind", "info", str(tmp_path / "missing")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "missing: no such file" in r.stderr
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    r = subprocess.run([sys.executable, "-m", "minimind", "info", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "config.json: not a valid JSON config" in r.stderr


def test_help_loads_neither_torch_nor_transformers():
    """`minimind --help` and every command's --help answer at once: building the whole parser imports no heavy
    library (they load when a command runs)."""
    code = ("import sys; from minimind.cli import build_parser, command_parser; build_parser(); "
            "command_parser('train', 'train.py'); import minimind; minimind.PRESETS; "
            "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
    for argv in (["--help"], ["serve", "--help"], ["data", "prepare", "--help"]):
        r = subprocess.run([sys.executable, "-m", "minimind", *argv], capture_output=True, text=True)
        assert r.returncode == 0 and "usage: minimind" in r.stdout
    r = subprocess.run([sys.executable, "-m", "minimind", "lora", "--help"], capture_output=True, text=True)
    assert "learning rate (default: 0.0002)" in r.stdout  # a stage's own default, shown by argparse
