"""DPO, direct preference optimisation (Rafailov et al., 2023): the loss, the frozen reference, the metrics.

For a prompt x with a chosen response y_w and a rejected one y_l, a policy pi (the model being trained) and a
frozen reference pi_ref (the same model before training):

    log pi(y | x) = sum over the response tokens t of log pi(y_t | x, y_<t)      (labels != -100)
    r(y)          = beta * (log pi(y | x) - log pi_ref(y | x))                  the implicit reward
    loss          = -log sigmoid(r(y_w) - r(y_l))                                mean over the pairs

The response tokens are those `DPODataset` labels: the final assistant reply and its closing <|im_end|>; prompt
and padding tokens carry -100 and count for nothing. Logged: rewards/chosen = mean r(y_w), rewards/rejected =
mean r(y_l), margin = mean (r(y_w) - r(y_l)), accuracy = share of pairs with r(y_w) > r(y_l). At step 0 the policy
is the reference, so every reward is 0 and the loss is log 2 = 0.693.

The reference runs on each batch: a frozen copy of the starting model (no gradients, eval mode, in the run's
autocast dtype), not log-probabilities precomputed over the whole set. A run often visits a fraction of the pairs
(`--max_steps`; the built-in set has 7,519), and a precomputing pass would cost a forward over every pair before
the first step; per batch, the reference costs one forward without backward (about a third of a training step)
and one copy of the weights, and it works unchanged with gradient accumulation, DDP and `--resume` (the copy is
rebuilt from `--pretrained_path`, which is the reference by definition).
"""

import copy
from functools import partial

import torch
import torch.nn.functional as F

from .config import TrainConfig
from .setup import build_model, fit, model_saver, require_base, sampler_for, start


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits (B, T, V), labels (B, T) -> (B,): sum over t of log p(labels[t+1] | tokens <= t), where labels != -100.

    Position t of the logits predicts token t + 1, so the labels are shifted left by one (as the model's own loss)."""
    B, T, V = logits.shape
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # (B, T): what position t predicts
    # -cross_entropy is log p(target); ignored positions give 0, so the sum runs over response tokens only.
    token_logps = -F.cross_entropy(logits.reshape(B * T, V).float(), targets.reshape(B * T), ignore_index=-100,
                                   reduction="none").view(B, T)
    return token_logps.sum(-1)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float = 0.1):
    """The sigmoid DPO loss from sequence log-probabilities (each (B,)). Returns (loss, metrics)."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)  # r(y_w), (B,)
    rejected_rewards = beta * (policy_rejected - ref_rejected)  # r(y_l), (B,)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    metrics = {"rewards/chosen": chosen_rewards.mean(), "rewards/rejected": rejected_rewards.mean(),
               "margin": (chosen_rewards - rejected_rewards).mean(),
               "accuracy": (chosen_rewards > rejected_rewards).float().mean()}
    return loss, metrics


def frozen_reference(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` that never trains: eval mode (no dropout), no gradients."""
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


def _pad_to(x: torch.Tensor, length: int, value: int) -> torch.Tensor:
    return F.pad(x, (0, length - x.shape[1]), value=value)


def pair_batch(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chosen and rejected sides of a collated DPO batch stacked into one batch of 2B rows (chosen first), padded to
    the longer side: (input_ids, attention_mask, labels), each (2B, T)."""
    T = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
    ids = torch.cat([_pad_to(batch[f"{s}_input_ids"], T, 0) for s in ("chosen", "rejected")])
    mask = torch.cat([_pad_to(batch[f"{s}_attention_mask"], T, 0) for s in ("chosen", "rejected")])
    labels = torch.cat([_pad_to(batch[f"{s}_labels"], T, -100) for s in ("chosen", "rejected")])
    return ids, mask, labels


def dpo_loss_fn(reference: torch.nn.Module, beta: float = 0.1):
    """loss_fn(model, batch) -> (loss, metrics) for the Trainer, on batches of `collate(DPODataset items)`.
    Policy and reference each run once on the 2B stacked sequences. The MoE balancing loss is added for MoE models."""

    def loss_fn(model, batch):
        ids, mask, labels = pair_batch(batch)
        out = model(ids, attention_mask=mask)
        policy_chosen, policy_rejected = sequence_logps(out.logits, labels).chunk(2)  # (B,) each
        with torch.no_grad():
            ref_logps = sequence_logps(reference(ids, attention_mask=mask).logits, labels)
        ref_chosen, ref_rejected = ref_logps.chunk(2)
        loss, metrics = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
        return loss + out.aux_loss, metrics

    return loss_fn


# --- DPO -----------------------------------------------------------------------------------------------------------

def run_dpo(config: TrainConfig) -> dict | None:
    """DPO of config.pretrained_path on preference pairs (default: the built-in ones) against a frozen copy of
    itself."""
    from ..data.datasets import DPODataset, collate
    from ..data.messages import Augment

    require_base(config, "dpo")
    config, dist_info, tokenizer = start(config, "dpo")
    model = build_model(config, tokenizer)
    reference = frozen_reference(model).to(config.device)  # the starting weights; a resumed run rebuilds the same
    kw = {"tokenizer": tokenizer, "seq_len": config.max_seq_len, "skip_bad_records": config.skip_bad_records,
          "augment": Augment(empty_think_ratio=config.empty_think_ratio, seed=config.seed)}
    train_set, val_set = DPODataset(config.data, split="train", **kw), DPODataset(config.data, split="val", **kw)
    return fit(config, "dpo", model, train_set, val_set, dist_info, loss_fn=dpo_loss_fn(reference, config.beta),
               collate_fn=partial(collate, pad_id=tokenizer.pad_token_id), save_model=model_saver(tokenizer),
               sample_fn=sampler_for(tokenizer, "sft"))
