"""Reinforcement learning on the shared trainer: GRPO with the PPO-clip or CISPO loss (`minimind grpo`), and what it
shares with PPO (`ppo.py`): the rollout step, the reference, the rewards, LoRA-only training.

A step (the trainer's `prepare` hook, then its usual loop):
1. roll out: the step's prompts (every micro-batch of the step at once), `num_generations` samples each, through
   the decode engine with the KV cache (`rollout.py`); each prompt's samples draw from a generator seeded from
   (seed, step, the prompt's index in the data), so a resumed run draws the same samples, and so does a run on
   another number of processes;
2. score: the rewards (`rewards.py`) of every completion;
3. old and reference log-probs: one forward of the policy and one of the frozen reference (skipped when beta = 0),
   no gradients, under the training autocast (why not the engine's: see `rollout.py`);
4. advantages: GRPO normalises each prompt's rewards within its group, A_i = (r_i - mean(r)) / (std(r) + eps)
   (Dr. GRPO: no division by the std, `--scale_rewards false`); PPO uses GAE on a value head (`ppo.py`);
5. `updates_per_batch` optimizer steps on these samples, each a normal trainer step (accumulation, clipping, AMP,
   NaN guard) whose loss is below. The training state is saved only between rollouts.

The loss, per completion token t of sample i (ratio rho = pi(y_t) / pi_old(y_t), advantage A_i):

    grpo    -min(rho * A, clip(rho, 1 - eps, 1 + eps_high) * A)               PPO's clipped surrogate
    cispo   -sg(min(rho, 1 + eps_high)) * A * log pi(y_t)                   CISPO: the importance weight clipped and
                                                                            detached; every token keeps a gradient
    + beta * KL_t,   KL_t = exp(ref - logp) - (ref - logp) - 1               k3 estimator of KL(pi || pi_ref), >= 0

and the per-token losses are averaged by `--loss_norm`: `token` (sum over all completion tokens of the micro-batch
/ their count, as DAPO: long answers weigh by their length), `sequence` (mean per sequence, then over sequences, as
the original GRPO: each answer weighs the same, which favours long wrong answers' tokens less), or `constant`
(sum / (sequences x max_new_tokens), as Dr. GRPO: no length bias at all).

Logged per step (metrics.jsonl): reward, reward_std, response_len, finished (share ending with eos), kl, clip_frac,
logp_gap (engine vs training forward log-probs), and the loss; on the console a line per --log_interval with the
reward and a sample.
"""

from dataclasses import replace

import torch

from ..infer.sampling import make_generator
from .config import TrainConfig, command_defaults
from .metrics import log
from .rollout import forward_logps, generate_rollouts

# --- losses --------------------------------------------------------------------------------------------------------

def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """rewards (P * G,), each prompt's G samples consecutive -> advantages (P * G,): the reward minus its group's
    mean, divided by the group's std (unbiased, as GRPO) + eps when `scale`."""
    r = rewards.view(-1, group_size).float()  # (P, G)
    centred = r - r.mean(1, keepdim=True)
    if scale and group_size > 1:
        centred = centred / (r.std(1, keepdim=True) + eps)
    return centred.view(-1)


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the sampled tokens' log-probs: exp(d) - d - 1, d = ref - logp."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1


def policy_loss(logps, old_logps, advantages, loss_type: str = "grpo", eps: float = 0.2,
                eps_high: float | None = None):
    """Per-token policy loss (N, L) and which tokens the clip acted on (N, L) bool. advantages: (N, L), or (N, 1)
    for one per sequence. See the module docstring."""
    eps_high = eps if eps_high is None else eps_high
    ratio = torch.exp(logps - old_logps)
    if loss_type == "grpo":
        clipped_ratio = ratio.clamp(1 - eps, 1 + eps_high)
        loss = -torch.min(ratio * advantages, clipped_ratio * advantages)
        clipped = ((ratio < 1 - eps) & (advantages < 0)) | ((ratio > 1 + eps_high) & (advantages > 0))
    elif loss_type == "cispo":
        weight = ratio.clamp(max=1 + eps_high).detach()
        loss = -weight * advantages * logps
        clipped = ratio > 1 + eps_high
    else:
        raise ValueError(f"loss_type must be grpo or cispo, got {loss_type!r}")
    return loss, clipped


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, norm: str = "token", max_new_tokens: int = 1):
    """Reduce per-token values (N, L) over the completion tokens (mask (N, L)) to one number; see --loss_norm."""
    mask = mask.to(per_token.dtype)
    if norm == "token":
        return (per_token * mask).sum() / mask.sum().clamp(min=1)
    if norm == "sequence":
        return ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    if norm == "constant":
        return (per_token * mask).sum() / (per_token.shape[0] * max_new_tokens)
    raise ValueError(f"loss_norm must be token, sequence or constant, got {norm!r}")


def grpo_loss(logps, old_logps, ref_logps, advantages, mask, beta: float = 0.0, loss_type: str = "grpo",
              eps: float = 0.2, eps_high: float | None = None, norm: str = "token", max_new_tokens: int = 1):
    """The GRPO / CISPO loss of one micro-batch: logps, old_logps, ref_logps (None when beta = 0) and mask are
    (N, L), advantages (N,). Returns (loss, metrics)."""
    per_token, clipped = policy_loss(logps, old_logps, advantages[:, None], loss_type, eps, eps_high)
    m = mask.float()
    metrics = {"clip_frac": (clipped.float() * m).sum() / m.sum().clamp(min=1)}
    if ref_logps is not None:
        kl = kl_k3(logps, ref_logps)
        metrics["kl"] = ((kl * m).sum() / m.sum().clamp(min=1)).detach()
        if beta:
            per_token = per_token + beta * kl
    return aggregate(per_token, mask, norm, max_new_tokens), metrics


# --- the step ------------------------------------------------------------------------------------------------------

def rollout_seed(seed: int, step: int, prompt: int) -> int:
    """The seed of the samples of prompt number `prompt` (its index in the data) at optimizer step `step`: the same
    on whichever process and in whichever batch the prompt is rolled out."""
    return (seed * 1_000_003 + step * 7919 + prompt * 104_729) % (2 ** 63)


class RolloutSteps:
    """The trainer's `prepare` hook for RL: prompts -> rollouts -> rewards -> old / reference log-probs ->
    advantages -> `updates_per_batch` copies of the micro-batches. `finish(batch, model)` adds the stage's
    advantages (GRPO here; PPO overrides it)."""

    def __init__(self, config: TrainConfig, tokenizer, rewards, reference=None, rank: int = 0, main: bool = True,
                 full_length: bool = False):
        self.config, self.tokenizer, self.rewards, self.reference = config, tokenizer, rewards, reference
        self.rank, self.main, self.full_length = rank, main, full_length

    def policy(self, model):
        return model

    def __call__(self, model, micro: list[dict], step: int, training: bool) -> list[list[dict]]:
        c = self.config
        records = [r for b in micro for r in b["records"]]
        G = c.num_generations if training else 1  # evaluation: one greedy answer per prompt
        policy = self.policy(model)
        device = next(policy.parameters()).device
        seeds = [rollout_seed(c.seed, step, r["prompt_index"]) for r in records]
        ro, texts, rows = self.rollout(policy, records, G, c.temperature if training else 0.0, seeds)
        rewards = torch.tensor(self.rewards(rows, texts), dtype=torch.float32, device=device)
        batch = {"input_ids": ro.input_ids, "attention_mask": ro.attention_mask, "completion_mask": ro.completion_mask,
                 "rewards": rewards}
        with torch.no_grad():
            batch["old_logps"] = self.old_logps(model, batch)
            if self.reference is not None:
                batch["ref_logps"], _ = forward_logps(self.reference, ro.input_ids, ro.attention_mask)
        m = ro.completion_mask.float()
        lengths = m.sum(1)
        gap = ((ro.engine_logps - batch["old_logps"]).abs() * m).sum() / m.sum().clamp(min=1)
        stats = {"reward": rewards.mean(), "reward_std": rewards.std() if len(rewards) > 1 else rewards.new_zeros(()),
                 "response_len": lengths.mean(), "finished": ro.finished.float().mean(), "logp_gap": gap}
        self.finish(batch, model, G, training)
        if training and self.main and c.log_interval and (step + 1) % c.log_interval == 0:
            log.info(f"Rollout @ step {step + 1}: reward {stats['reward']:.3f} (std {stats['reward_std']:.3f}), "
                     f"length {stats['response_len']:.1f}, logp gap {gap:.2e}; sample {texts[0][:80]!r}")
        # back into the step's micro-batches: micro-batch a's prompts are rows [a * b * G, (a + 1) * b * G)
        per = len(micro[0]["records"]) * G
        chunks = []
        for a in range(len(micro)):
            rows_a = slice(a * per, (a + 1) * per)
            chunk = {k: v[rows_a] for k, v in batch.items()}
            chunk["stats"] = stats
            chunks.append(chunk)
        return [chunks] * (c.updates_per_batch if training else 1)

    def rollout(self, policy, records: list[dict], G: int, temperature: float, seeds: list[int]):
        """(Rollout, completion texts, the record of each row): G samples of each record's prompt, one turn, drawn
        with a generator seeded by the record's seed."""
        device = next(policy.parameters()).device
        generators = [make_generator(s, device) for s in seeds]
        ro = generate_rollouts(policy, [r["prompt_ids"] for r in records], G, self.config.max_new_tokens,
                               self.tokenizer.eos_token_id, temperature, generators, self.full_length)
        texts = self.tokenizer.batch_decode(ro.completions, skip_special_tokens=True)
        return ro, texts, [r for r in records for _ in range(G)]

    def old_logps(self, model, batch):
        logps, _ = forward_logps(model, batch["input_ids"], batch["attention_mask"])
        return logps

    def finish(self, batch: dict, model, G: int, training: bool):
        """GRPO: group-normalised advantages (zero in evaluation, one sample per prompt)."""
        batch["advantages"] = group_advantages(batch["rewards"], G, self.config.scale_rewards)


def grpo_loss_fn(config: TrainConfig):
    """loss_fn(model, batch) -> (loss, metrics) for the trainer, on batches `RolloutSteps` prepared."""

    def loss_fn(model, batch):
        logps, out = forward_logps(model, batch["input_ids"], batch["attention_mask"])
        loss, metrics = grpo_loss(logps, batch["old_logps"], batch.get("ref_logps"), batch["advantages"],
                                  batch["completion_mask"], config.beta, config.loss_type, config.clip_eps,
                                  config.clip_eps_high, config.loss_norm, config.max_new_tokens)
        return loss + out.aux_loss, {**metrics, **batch["stats"]}

    return loss_fn


# --- setting up a run ----------------------------------------------------------------------------------------------

def check_rl_config(config: TrainConfig, command: str):
    from .setup import require_base

    require_base(config, command)
    if config.num_generations < 1 or (command == "grpo" and config.num_generations < 2):
        raise ValueError(f"--num_generations must be >= {2 if command == 'grpo' else 1} (GRPO compares the samples "
                         f"of a prompt with each other), got {config.num_generations}")
    if config.max_new_tokens < 1 or config.max_new_tokens >= config.max_seq_len:
        raise ValueError(f"--max_new_tokens must be between 1 and --max_seq_len - 1 ({config.max_seq_len - 1}), got "
                         f"{config.max_new_tokens}")
    if config.updates_per_batch < 1:
        raise ValueError(f"--updates_per_batch must be >= 1, got {config.updates_per_batch}")
    if config.temperature <= 0:
        raise ValueError(f"--temperature must be > 0 for RL rollouts (sampling), got {config.temperature}")
    if not config.clip_eps > 0 or (config.clip_eps_high is not None and not config.clip_eps_high > 0):
        raise ValueError("--clip_eps and --clip_eps_high must be > 0")


ANSWER_REWARDS = ("exact", "numeric")  # the built-ins that compare with a prompt's "answer"


def fit_rewards(config: TrainConfig, command: str, records: list[dict]) -> TrainConfig:
    """The config with rewards that fit prompts without an "answer" field (MiniMind-3's rlaif.jsonl and
    agent_rl.jsonl): the command's default reward (which needs one) replaced by gt (agent: and tool_call=0.2) when
    every prompt has a "gt" list, else by length:20-800 + repetition (MiniMind-3's rule-based GRPO terms; its other
    term is a reward model: --reward_model). An answer reward the user chose is a ValueError instead."""
    wanted = [s for s in config.reward if s.partition("=")[0].partition(":")[0] in ANSWER_REWARDS]
    if not wanted or any("answer" in r for r in records):
        return config
    if config.reward != command_defaults(command)["reward"]:
        raise ValueError(f"--reward {wanted[0]} compares with each prompt's \"answer\" field, and the prompts of "
                         f"{config.data} have none: give answers, or a reward that needs none (gt with a \"gt\" "
                         "list; length:20-800, repetition; --reward_model)")
    if all("gt" in r for r in records):
        reward = ["gt", "tool_call=0.2"] if command == "agent" else ["gt"]
    else:
        reward = ["length:20-800", "repetition"]
    log.info(f"The prompts have no \"answer\" field, which the default reward ({', '.join(config.reward)}) needs: "
             f"rewarding with {', '.join(reward)} instead (--reward chooses another)")
    return replace(config, reward=reward)


def rl_parts(config: TrainConfig, command: str, tools: list[dict] | None = None):
    """What GRPO and PPO share: (config, dist_info, tokenizer, policy (LoRA applied with --lora_rank), reference or
    None (beta = 0), rewards, train_set, val_set, save_model). `tools`: the tool schemas the prompts offer (a prompt
    whose system message offers its own offers those)."""
    from ..data.messages import Augment
    from ..data.tasks import PromptDataset
    from .dpo import frozen_reference
    from .lora_finetune import lora_saver, target_names
    from .rewards import Rewards
    from .setup import build_model, model_saver, start

    check_rl_config(config, command)
    if config.reward:
        Rewards(config.reward)  # the reward functions checked before anything loads
    augment = Augment(add_system_ratio=config.add_system_ratio, thinking_ratio=config.thinking_ratio, seed=config.seed)
    config, dist_info, tokenizer = start(config, command)
    model = build_model(config, tokenizer)
    if config.max_seq_len > model.config.max_position_embeddings:
        raise ValueError(f"--max_seq_len {config.max_seq_len} is longer than the model's context "
                         f"({model.config.max_position_embeddings} positions): a prompt and its answers must fit; "
                         f"use --max_seq_len {model.config.max_position_embeddings} or less")
    reference = frozen_reference(model).to(config.device) if config.beta > 0 else None  # rebuilt the same on resume
    save_model = model_saver(tokenizer)
    if config.lora_rank:
        from ..lora import apply_lora

        model.requires_grad_(False)
        apply_lora(model, config.lora_rank, config.lora_alpha, config.lora_dropout, target_names(config.lora_targets))
        save_model = lora_saver(tokenizer, False, str(config.pretrained_path))
    kw = {"tokenizer": tokenizer, "max_prompt_len": config.max_seq_len - config.max_new_tokens,
          "skip_bad_records": config.skip_bad_records, "tools": tools, "augment": augment}
    train_set, val_set = PromptDataset(config.data, split="train", **kw), PromptDataset(config.data, split="val", **kw)
    config = fit_rewards(config, command, train_set.records)
    rewards = Rewards(config.reward, config.reward_model, config.device)
    log.info(f"Reward: {rewards!r}")
    return config, dist_info, tokenizer, model, reference, rewards, train_set, val_set, save_model


def run_grpo(config: TrainConfig) -> dict | None:
    """GRPO (or CISPO) of config.pretrained_path on prompts (default: the built-in arithmetic task) with the rewards
    of config.reward; see the module docstring."""
    from ..data.tasks import collate_prompts
    from .setup import fit, sampler_for

    config, dist_info, tokenizer, model, reference, rewards, train_set, val_set, save_model = rl_parts(config, "grpo")
    steps = RolloutSteps(config, tokenizer, rewards, reference, dist_info.rank, dist_info.main,
                         full_length=config.fsdp and dist_info.world > 1)
    return fit(config, "grpo", model, train_set, val_set, dist_info, loss_fn=grpo_loss_fn(config),
               collate_fn=collate_prompts, save_model=save_model, sample_fn=sampler_for(tokenizer, "sft"),
               prepare=steps, updates_per_batch=config.updates_per_batch)

