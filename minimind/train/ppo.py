"""PPO with a value head (`minimind ppo`), on the shared trainer and the rollout step of `rl.py`.

The critic is a linear value head on the policy's last hidden state (`PolicyWithValue`): one model, one optimizer,
the value loss weighted by `--vf_coef`. For completion token t of a sample, with V_t the value of the state before
it (the hidden state that predicts t) and the KL to the frozen reference paid per token:

    r_t     = -beta * (log pi_old(y_t) - log pi_ref(y_t))  (+ the sample's reward at its last token)
    delta_t = r_t + gamma * V_{t+1} - V_t                  (V after the last token = 0)
    A_t     = delta_t + gamma * lam * A_{t+1}               GAE; returns R_t = A_t + V_t; A whitened over the batch
    loss    = PPO-clip(rho_t, A_t) + vf_coef * 0.5 * max((V - R)^2, (V_old + clip(V - V_old, +-value_clip) - R)^2)

both averaged by --loss_norm over the completion tokens. Logged besides GRPO's metrics: value_loss, the
value's explained-variance-free mean (`value`), and `returns`.
"""

import torch
import torch.nn as nn

from .config import TrainConfig
from .rl import RolloutSteps, aggregate, kl_k3, policy_loss, rl_parts


class PolicyWithValue(nn.Module):
    """The policy (a MiniMindForCausalLM, maybe with LoRA) and a value head on its last hidden state.
    forward -> (the policy's output, values (N, L)): values[:, t] estimates the return before token t."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy
        self.config = policy.config
        self.value_head = nn.Linear(policy.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask=None):
        out = self.policy(input_ids, attention_mask=attention_mask)
        v = self.value_head(out.hidden_states).squeeze(-1).float()  # (N, L): value after token t
        return out, torch.nn.functional.pad(v[:, :-1], (1, 0))  # (N, L): value before token t


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation over the completion tokens. rewards, values, mask: (N, L), the completion
    tokens contiguous in each row. Returns (advantages, returns), zero outside the mask."""
    mask = mask.float()
    adv = torch.zeros_like(values)
    next_value = torch.zeros(values.shape[0], device=values.device)
    next_adv = torch.zeros_like(next_value)
    for t in range(values.shape[1] - 1, -1, -1):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = a * m
        # a padded position passes the next real token's values through unchanged (none come after the answer)
        next_value = torch.where(m > 0, values[:, t], next_value)
        next_adv = torch.where(m > 0, a, next_adv)
    return adv, (adv + values) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, across_processes: bool = False) -> torch.Tensor:
    """(x - mean) / std over the masked entries; `across_processes`: over every process' entries (the global
    batch), as one process with all of them computes it."""
    def total(t):
        if across_processes and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(t)
        return t

    m = mask.float()
    n = total(m.sum()).clamp(min=1)
    mean = total((x * m).sum()) / n
    var = total((((x - mean) * m) ** 2).sum()) / n
    return (x - mean) * torch.rsqrt(var + eps) * m


def value_loss(values, old_values, returns, clip: float):
    """Per-token clipped value loss (N, L): 0.5 * max((V - R)^2, (V_old + clip(V - V_old) - R)^2)."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2)


def ppo_loss(logps, old_logps, advantages, values, old_values, returns, mask, vf_coef: float = 0.5,
             value_clip: float = 0.2, eps: float = 0.2, eps_high: float | None = None, norm: str = "token",
             max_new_tokens: int = 1):
    """The PPO loss of one micro-batch (every argument (N, L) but the settings). Returns (loss, metrics)."""
    pg, clipped = policy_loss(logps, old_logps, advantages, "grpo", eps, eps_high)
    vl = value_loss(values, old_values, returns, value_clip)
    loss = aggregate(pg, mask, norm, max_new_tokens) + vf_coef * aggregate(vl, mask, norm, max_new_tokens)
    m = mask.float()
    n = m.sum().clamp(min=1)
    return loss, {"clip_frac": (clipped.float() * m).sum() / n, "value_loss": ((vl * m).sum() / n).detach(),
                  "value": ((values * m).sum() / n).detach()}


class PPOSteps(RolloutSteps):
    """Rollouts for PPO: the model is a `PolicyWithValue`; old values come with the old log-probs; GAE."""

    def policy(self, model):
        return model.policy

    def old_logps(self, model, batch):
        from .rollout import token_logps

        out, values = model(batch["input_ids"], attention_mask=batch["attention_mask"])
        batch["old_values"] = values * batch["completion_mask"]
        return token_logps(out.logits, batch["input_ids"])

    def finish(self, batch: dict, model, G: int, training: bool):
        c, mask = self.config, batch["completion_mask"]
        per_token = torch.zeros_like(batch["old_logps"])
        if "ref_logps" in batch:
            per_token = -c.beta * (batch["old_logps"] - batch["ref_logps"]) * mask
        last = mask.cumsum(1).argmax(1)  # (N,) each row's last completion token (the first max of the cumsum)
        per_token[torch.arange(len(last), device=last.device), last] += batch["rewards"]
        adv, returns = gae(per_token, batch["old_values"], mask, c.gamma, c.lam)
        batch["advantages"], batch["returns"] = whiten(adv, mask, across_processes=training), returns


def ppo_loss_fn(config: TrainConfig):
    def loss_fn(model, batch):
        from .rollout import token_logps

        out, values = model(batch["input_ids"], attention_mask=batch["attention_mask"])
        logps = token_logps(out.logits, batch["input_ids"])
        mask = batch["completion_mask"]
        loss, metrics = ppo_loss(logps, batch["old_logps"], batch["advantages"], values, batch["old_values"],
                                 batch["returns"], mask, config.vf_coef, config.value_clip, config.clip_eps,
                                 config.clip_eps_high, config.loss_norm, config.max_new_tokens)
        if "ref_logps" in batch:
            m = mask.float()
            metrics["kl"] = ((kl_k3(logps, batch["ref_logps"]) * m).sum() / m.sum().clamp(min=1)).detach()
        return loss + out.aux_loss, {**metrics, **batch["stats"]}

    return loss_fn


def run_ppo(config: TrainConfig) -> dict | None:
    """PPO of config.pretrained_path on prompts (default: the built-in arithmetic task); see the module docstring."""
    from ..data.tasks import collate_prompts
    from .setup import fit, sampler_for

    config, dist_info, tokenizer, policy, reference, rewards, train_set, val_set, save = rl_parts(config, "ppo")
    model = PolicyWithValue(policy)
    sample = sampler_for(tokenizer, "sft")
    steps = PPOSteps(config, tokenizer, rewards, reference, dist_info.rank, dist_info.main,
                     full_length=config.fsdp and dist_info.world > 1)
    return fit(config, "ppo", model, train_set, val_set, dist_info, loss_fn=ppo_loss_fn(config),
               collate_fn=collate_prompts,
               save_model=lambda m, out, final, epoch=None: save(m.policy, out, final, epoch),
               sample_fn=lambda m: sample(m.policy), prepare=steps, updates_per_batch=config.updates_per_batch)
