"""DPO: sequence log-probabilities over response tokens only, the loss against a hand-computed value, the stacked
policy/reference pass, and a `minimind dpo` run on built-in pairs whose reward margin rises."""

import json
import math

import pytest
import torch
from helpers import tiny_model

from minimind import MiniMindForCausalLM
from minimind.cli.train import parse_args
from minimind.data.datasets import DPODataset, collate
from minimind.data.messages import parse_pair
from minimind.train.dpo import dpo_loss, dpo_loss_fn, frozen_reference, run_dpo, sequence_logps


def stage_args(stage, argv):
    return parse_args(argv, command=stage)

RUN = ["--max_seq_len", "48", "--batch_size", "5", "--log_interval", "1", "--eval_interval", "0", "--eval_batches", "2",
       "--dtype", "fp32", "--save_steps", "0"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_dpo_loss_equals_the_hand_computed_value():
    # Two pairs, beta 0.1. Pair 1: policy prefers chosen by 2 nats more than the reference does -> logit 0.2;
    # pair 2: by -1 -> logit -0.1. loss = (log(1 + e^-0.2) + log(1 + e^0.1)) / 2 = (0.598139 + 0.744397) / 2.
    policy_chosen, policy_rejected = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    ref_chosen, ref_rejected = torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0])
    loss, m = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1)
    assert loss.item() == pytest.approx(0.6712677647, abs=1e-7)
    assert m["rewards/chosen"].item() == pytest.approx(0.05)  # 0.1 * mean(1, 0)
    assert m["rewards/rejected"].item() == pytest.approx(0.0)  # 0.1 * mean(-1, 1)
    assert m["margin"].item() == pytest.approx(0.05)  # mean(0.2, -0.1)
    assert m["accuracy"].item() == 0.5
    same = torch.tensor([-4.0, -5.0])
    assert dpo_loss(same, same, same, same)[0].item() == pytest.approx(math.log(2))  # policy == reference


def test_sequence_logps_sum_over_response_tokens_only():
    # Position t predicts labels[t + 1]; labels -100 count for nothing.
    logits = torch.zeros(1, 4, 3)
    logits[0, 0] = torch.tensor([0.0, 0.0, math.log(2)])  # p(2) = 2/4
    logits[0, 1] = torch.tensor([math.log(3), 0.0, 0.0])  # p(0) = 3/5
    logits[0, 2] = torch.tensor([5.0, -5.0, 1.0])  # predicts labels[3] = -100: ignored
    labels = torch.tensor([[-100, 2, 0, -100]])
    assert sequence_logps(logits, labels).item() == pytest.approx(math.log(0.5 * 0.6), abs=1e-6)


def pair_items(tok):
    """Two DPODataset items made from in-memory records (the prompts and responses differ in length)."""
    records = [{"prompt": "Hi there", "chosen": "Hello! How can I help you today? Ask me anything at all.",
                "rejected": "No."},
               {"prompt": "What is two plus two? Answer briefly please.", "chosen": "Four.", "rejected": "Five."}]
    ds = DPODataset.__new__(DPODataset)
    ds.pairs, ds.tokenizer, ds.seq_len = [parse_pair(r, f"test:{i}") for i, r in enumerate(records)], tok, 64
    return [ds[0], ds[1]]


def test_loss_fn_stacks_both_sides_and_matches_separate_passes():
    from minimind.tokenizer import load_tokenizer
    tok = load_tokenizer()
    batch = collate(pair_items(tok), pad_id=tok.pad_token_id)
    assert batch["chosen_input_ids"].shape != batch["rejected_input_ids"].shape  # the sides pad differently
    policy = tiny_model().eval()
    loss_fn = dpo_loss_fn(frozen_reference(policy), beta=0.5)
    loss, m = loss_fn(policy, batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6) and m["margin"].item() == 0  # step 0: policy == ref

    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    loss, m = loss_fn(policy, batch)

    def logps(model, side):  # each side on its own, unpadded by the other side
        out = model(batch[f"{side}_input_ids"], attention_mask=batch[f"{side}_attention_mask"])
        return sequence_logps(out.logits, batch[f"{side}_labels"])
    reference = tiny_model().eval()
    with torch.no_grad():
        want, want_m = dpo_loss(logps(policy, "chosen"), logps(policy, "rejected"),
                                logps(reference, "chosen"), logps(reference, "rejected"), beta=0.5)
    assert loss.item() == pytest.approx(want.item(), abs=1e-5)
    assert m["margin"].item() == pytest.approx(want_m["margin"].item(), abs=1e-5) and m["margin"] != 0


def test_reward_margin_rises_on_the_builtin_pairs(tmp_path):
    from minimind.data import corpus
    from minimind.tokenizer import load_tokenizer, save_tokenizer

    base = tmp_path / "base"
    tiny_model().save_pretrained(base)
    save_tokenizer(load_tokenizer(), base)
    pairs = tmp_path / "pairs.jsonl"  # the first 21 built-in pairs (20 train, 1 held out)
    pairs.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in corpus.dpo_pairs("train")[:21]))
    out = tmp_path / "dpo"
    run_dpo(stage_args("dpo", [*RUN, "--pretrained_path", str(base), "--data", str(pairs), "--epochs", "3",
                               "--learning_rate", "3e-3", "--beta", "0.1", "--output_dir", str(out)]))
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "margin" in r]
    assert len(steps) == 12 and steps[0]["margin"] == 0 and steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    late = sum(r["margin"] for r in steps[-4:]) / 4
    assert late > 0.5 and sum(r["accuracy"] for r in steps[-4:]) / 4 > 0.9  # the margin rose from 0
    evals = [r for r in logs if "eval_loss" in r]
    assert all(k in evals[-1] for k in ("eval_margin", "eval_accuracy", "eval_rewards/chosen"))
    # a full model dir, like train's, holding the trained policy (not the base): against the base as reference it
    # prefers the chosen responses of the training pairs as the last steps did
    saved, start = MiniMindForCausalLM.from_pretrained(out).eval(), MiniMindForCausalLM.from_pretrained(base)
    tok = load_tokenizer(out)
    batch = collate(list(DPODataset(str(pairs), tok, seq_len=48)), pad_id=tok.pad_token_id)
    with torch.no_grad():
        _, m = dpo_loss_fn(frozen_reference(start), beta=0.1)(saved, batch)
    assert m["margin"].item() > 0.5 and m["accuracy"].item() > 0.9, m


def test_dpo_needs_a_base_model(tmp_path):
    with pytest.raises(ValueError, match="--pretrained_path is required for dpo"):
        run_dpo(stage_args("dpo", [*RUN, "--output_dir", str(tmp_path)]))
