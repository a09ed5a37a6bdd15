"""`TrainConfig` and `--config FILE`: settings from YAML or JSON, flags over the file, unknown keys refused, and a
run's args.json read back as the same settings."""

import json
from dataclasses import asdict

import pytest

from minimind.cli.train import parse_args
from minimind.train.config import TrainConfig, command_defaults, read_config_file


def test_defaults_are_the_commands():
    assert TrainConfig(**command_defaults("train")) == TrainConfig()
    assert "beta" not in command_defaults("train") and "beta" in asdict(TrainConfig())
    lora = parse_args([], command="lora")
    assert (lora.learning_rate, lora.dropout, lora.stage, lora.lora_rank) == (2e-4, 0.0, "sft", 8)
    assert parse_args([], command="dpo").learning_rate == 5e-6


def test_yaml_config_and_flags_over_it(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: tiny\nepochs: 5\nlearning_rate: 3e-4\nskip_bad_records: true\noutput_dir: from_file\n")
    c = parse_args(["--config", str(path)])
    assert (c.preset, c.hidden_size, c.epochs, c.learning_rate, c.skip_bad_records, c.output_dir) == (
        "tiny", 128, 5, 3e-4, True, "from_file")  # YAML's 3e-4 is a string: read as the float it means
    c = parse_args(["--epochs", "2", "--config", str(path), "--output_dir", "from_flag"])
    assert (c.epochs, c.output_dir, c.learning_rate) == (2, "from_flag", 3e-4)  # flags win, wherever they stand
    assert c.batch_size == 4  # neither: the default


def test_json_config_for_a_stage(tmp_path):
    path = tmp_path / "lora.json"
    path.write_text(json.dumps({"lora_rank": 4, "lora_targets": ["q_proj", "v_proj"], "learning_rate": 1e-3}))
    c = parse_args(["--config", str(path), "--lora_rank", "16"], command="lora")
    assert (c.lora_rank, c.lora_targets, c.learning_rate, c.dropout) == (16, ["q_proj", "v_proj"], 1e-3, 0.0)
    teacher = tmp_path / "distill.yaml"
    teacher.write_text("teacher: some_model\nalpha: 0.25\n")  # --teacher may come from the file alone
    c = parse_args(["--config", str(teacher)], command="distill")
    assert (c.teacher, c.alpha) == ("some_model", 0.25)


def test_bad_config_files_are_refused_naming_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 2\nlearnig_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown key 'learnig_rate' \(not a setting of minimind train"):
        parse_args(["--config", str(path)])
    path.write_text("beta: 0.2\n")
    with pytest.raises(ValueError, match=r"unknown key 'beta' \(a setting of minimind dpo / grpo / ppo / agent, "
                                         r"not of minimind train\)"):
        parse_args(["--config", str(path)])
    assert read_config_file(path, "dpo") == {"beta": 0.2}
    path.write_text("epochs: three\n")
    with pytest.raises(ValueError, match=r"bad.yaml: epochs: expected int, got 'three'"):
        parse_args(["--config", str(path)])
    path.write_text("dtype: fp8\n")
    with pytest.raises(ValueError, match=r"bad.yaml: dtype: 'fp8' is not one of auto, fp32, bf16, fp16"):
        parse_args(["--config", str(path)])
    path.write_text("- epochs\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        parse_args(["--config", str(path)])
    with pytest.raises(FileNotFoundError, match="missing.json: no such file"):
        parse_args(["--config", str(tmp_path / "missing.json")])


def test_args_json_round_trip(tmp_path, capsys):
    from minimind.train.pretrain import run

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(200)))
    flags = ["--hidden_size", "32", "--num_layers", "1", "--num_heads", "2", "--num_kv_heads", "1", "--max_seq_len",
             "32", "--max_steps", "1", "--eval_interval", "0", "--eval_batches", "1", "--data", str(corpus),
             "--learning_rate", "3e-3", "--output_dir", str(tmp_path / "a")]
    first = parse_args(flags)
    run(first)
    written = tmp_path / "a" / "args.json"
    again = parse_args(["--config", str(written)])
    assert again == first
    saved = json.loads(written.read_text())
    assert "lora_rank" not in saved and "teacher" not in saved  # only train's settings
    run(parse_args(["--config", str(written), "--output_dir", str(tmp_path / "b")]))
    assert json.loads((tmp_path / "b" / "args.json").read_text()) == {**saved, "output_dir": str(tmp_path / "b")}


def test_cli_reports_a_bad_config_in_one_line(tmp_path, capsys):
    from minimind.cli import main

    path = tmp_path / "x.json"
    path.write_text('{"nope": 1}')
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", str(path)])
    assert e.value.code == 2
    assert "x.json: unknown key 'nope'" in capsys.readouterr().err


def test_a_run_from_pretrained_weights_uses_their_tokenizer(tmp_path):
    from minimind.tokenizer import load_tokenizer, save_tokenizer
    from minimind.train.config import TrainConfig
    from minimind.train.setup import tokenizer_path

    assert tokenizer_path(TrainConfig()) is None  # the shipped one
    save_tokenizer(load_tokenizer(), tmp_path)
    assert tokenizer_path(TrainConfig(pretrained_path=str(tmp_path))) == str(tmp_path)
    assert tokenizer_path(TrainConfig(pretrained_path=str(tmp_path / "model_final.pth"))) == str(tmp_path)
    assert tokenizer_path(TrainConfig(pretrained_path=str(tmp_path), tokenizer="mine")) == "mine"
    assert tokenizer_path(TrainConfig(pretrained_path=str(tmp_path / "elsewhere" / "w.pth"))) is None
