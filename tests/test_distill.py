"""Distillation: the loss against its formula written out per position, the frozen teacher, and a
`minimind distill` run that lowers the student's KL to the teacher."""

import json

import pytest
import torch
from helpers import tiny_model

from minimind import MiniMindForCausalLM
from minimind.cli.train import parse_args
from minimind.train.distill import distill_loss, load_teacher, run_distill


def stage_args(stage, argv):
    return parse_args(argv, command=stage)

STUDENT = ["--hidden_size", "32", "--num_layers", "2", "--num_heads", "2", "--num_kv_heads", "1"]
RUN = ["--max_seq_len", "32", "--batch_size", "4", "--log_interval", "1", "--eval_interval", "0", "--eval_batches", "2",
       "--dtype", "fp32", "--save_steps", "0"]


pytestmark = pytest.mark.usefixtures("one_thread")


def teacher_model(seed=7):
    """A bigger random model with confident (peaked) predictions: its logits scaled up 10x through the final norm."""
    model = tiny_model(seed, hidden=64)
    with torch.no_grad():
        model.model.norm.weight.mul_(10)
    return model


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    teacher_model(seed=7).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text("\n\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog number {i * 7 % 13}."
                                for i in range(300)), encoding="utf-8")
    return path


def test_distill_loss_matches_the_formula_position_by_position():
    torch.manual_seed(0)
    B, T, V, temp, alpha = 2, 5, 7, 2.0, 0.3
    s, t = torch.randn(B, T, V), torch.randn(B, T, V) * 2
    labels = torch.randint(0, V, (B, T))
    labels[0, :2] = -100  # prompt-like positions without a label
    loss, ce, kl = distill_loss(s, t, labels, alpha, temp)
    ces, kls = [], []
    for b in range(B):
        for i in range(T - 1):  # position i predicts labels[i + 1]
            y = labels[b, i + 1].item()
            if y == -100:
                continue
            ces.append(-torch.log_softmax(s[b, i], -1)[y])
            p, q = torch.softmax(t[b, i] / temp, -1), torch.softmax(s[b, i] / temp, -1)
            kls.append((p * (p.log() - q.log())).sum())
    want_ce, want_kl = torch.stack(ces).mean(), torch.stack(kls).mean()
    assert len(ces) == B * (T - 1) - 1
    assert ce.item() == pytest.approx(want_ce.item(), abs=1e-5) and kl.item() == pytest.approx(want_kl.item(), abs=1e-5)
    assert loss.item() == pytest.approx(alpha * want_ce.item() + (1 - alpha) * temp ** 2 * want_kl.item(), abs=1e-5)
    assert distill_loss(s, s, labels, 0.0, temp)[0].item() == pytest.approx(0.0, abs=1e-6)  # student == teacher
    model = tiny_model()
    ids = torch.randint(0, 6400, (2, 12))
    out = model(ids, labels=ids)
    assert distill_loss(out.logits, out.logits, ids, 1.0)[0].item() == pytest.approx(out.loss.item(), abs=1e-5)


def test_teacher_is_frozen_in_eval_mode_and_the_training_dtype(teacher_dir):
    teacher = load_teacher(str(teacher_dir), "cpu", torch.bfloat16)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(p.dtype == torch.bfloat16 for p in teacher.parameters())
    want = teacher_model(seed=7).state_dict()
    assert torch.equal(teacher.state_dict()["model.layers.0.mlp.up_proj.weight"].float(),
                       want["model.layers.0.mlp.up_proj.weight"].bfloat16().float())


def test_distillation_lowers_the_kl_to_the_teacher(teacher_dir, text_file, tmp_path):
    def final_kls(alpha, out):
        flags = ["--teacher", str(teacher_dir), "--stage", "pretrain", "--data", str(text_file), "--max_steps", "12",
                 "--learning_rate", "3e-2", "--alpha", alpha, "--temperature", "2", "--output_dir", str(out)]
        result = run_distill(stage_args("distill", [*RUN, *STUDENT, *flags]))
        kls = [json.loads(line)["kl"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"kl"' in line]
        assert len(kls) == 12
        return kls, result

    kls, result = final_kls("0.1", tmp_path / "student")
    labels_only, _ = final_kls("1.0", tmp_path / "control")  # the same run with no KL term: the control
    assert sum(kls[-3:]) < sum(kls[:3])  # the student moved towards the teacher ...
    assert sum(kls[-3:]) < 0.75 * sum(labels_only[-3:])  # ... much more than training on the labels alone moves it
    assert "eval_kl" in result and "eval_ce" in result
    student = MiniMindForCausalLM.from_pretrained(tmp_path / "student")
    assert student.config.hidden_size == 32  # the student's size, not the teacher's


def test_distill_refuses_a_teacher_with_another_vocabulary_or_tokenizer(teacher_dir, text_file, tmp_path):
    args = stage_args("distill", [*RUN, *STUDENT, "--vocab_size", "7000", "--teacher", str(teacher_dir), "--stage",
                                  "pretrain", "--data", str(text_file), "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="has vocab_size 6400 but the student 7000"):
        run_distill(args)
    from minimind.tokenizer import train_tokenizer
    other = tmp_path / "other-teacher"  # same sizes, another tokenizer
    teacher_model().save_pretrained(other)
    train_tokenizer([f"some other text number {i}" for i in range(50)], 300, other)
    from minimind.tokenizer import SHIPPED

    # (without --tokenizer the student takes the teacher's; a different one given is refused)
    args = stage_args("distill", [*RUN, *STUDENT, "--teacher", str(other), "--stage", "pretrain", "--data",
                                  str(text_file), "--output_dir", str(tmp_path), "--tokenizer", str(SHIPPED)])
    with pytest.raises(ValueError, match="the teacher was trained with another tokenizer"):
        run_distill(args)
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        run_distill(stage_args("distill", [*RUN, *STUDENT, "--teacher", str(tmp_path / "nope"), "--output_dir",
                                           str(tmp_path)]))


def test_student_from_a_config_file(teacher_dir, text_file, tmp_path):
    out = tmp_path / "student"
    run_distill(stage_args("distill", [*RUN, "--student_config", str(teacher_dir / "config.json"), "--teacher",
                                       str(teacher_dir), "--stage", "pretrain", "--data", str(text_file),
                                       "--max_steps", "1", "--output_dir", str(out)]))
    assert MiniMindForCausalLM.from_pretrained(out).config.hidden_size == 64  # the config's size, not the flags'
