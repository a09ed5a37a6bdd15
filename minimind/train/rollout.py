"""Rollouts for reinforcement learning: sample completions of prompts through the one decode engine
(`minimind.infer.engine.DecodeBatch`), and the log-probabilities of their tokens.

`generate_rollouts` puts every sample of every prompt in one running batch (prompt i's `num_generations` samples are
rows i*G .. i*G+G-1), prefilled together and decoded with the KV cache until every row has ended (eos) or
`max_new_tokens`. It records the log-probability the engine gave each sampled token (under the policy itself,
temperature 1: the distribution the training forward scores), so the two can be compared.

`token_logps(logits, ids)` is the training forward's view: log pi(token t | tokens < t) at every position of a
right-padded batch. Measured on the `tiny` preset (random weights, 1,024 sampled tokens, CPU): in fp32 the engine's
and the forward's log-probs differ by 1.8e-7 on average (at most 9.5e-7): the same weights and arithmetic, KV-cached
vs whole sequence; under bf16 autocast by 6.3e-4 on average, at most 3.9e-3 (rounding in another order of
operations), i.e. importance ratios off by up to 0.4% before any update.
The RL stages therefore never use the engine's numbers in a loss: the "old" log-probs of the importance ratio are
recomputed by the training forward, under the training autocast, before the first update, so the ratio is exactly 1
there and measures only what the updates changed. The gap is logged as `logp_gap` (mean absolute difference per
token) so a precision problem shows.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..infer.engine import DecodeBatch, Group, eval_mode


@dataclass(eq=False)
class LoggedGroup(Group):
    """A decode group that also keeps log pi(chosen token) of the unfiltered policy (temperature 1) at every step."""
    logps: list = field(default_factory=list, init=False, repr=False)

    def next_tokens(self, logits: torch.Tensor) -> torch.Tensor:
        tokens = super().next_tokens(logits)
        self.logps.append(torch.log_softmax(logits.float(), -1).gather(-1, tokens[:, None]).squeeze(-1))
        return tokens


@dataclass
class Rollout:
    """N = prompts x num_generations sampled sequences, right-padded to one length L."""
    input_ids: torch.Tensor  # (N, L) prompt + completion, padding 0
    attention_mask: torch.Tensor  # (N, L) 1 on real tokens
    completion_mask: torch.Tensor  # (N, L) 1 on completion tokens (their closing eos included)
    engine_logps: torch.Tensor  # (N, L) the engine's log pi of each completion token (0 elsewhere)
    completions: list[list[int]]  # each row's completion tokens
    finished: torch.Tensor  # (N,) bool: ended with eos (else cut at max_new_tokens)


@torch.no_grad()
def generate_rollouts(model, prompts: list[list[int]], num_generations: int, max_new_tokens: int, eos_token_id: int,
                      temperature: float = 1.0, generator: torch.Generator | list | None = None,
                      full_length: bool = False) -> Rollout:
    """Sample `num_generations` completions of each prompt (token id lists) in one batch; see the module docstring.
    `generator`: one for the whole batch, or a list of one per prompt (its samples are then the same in any batch).
    `full_length`: decode all `max_new_tokens` steps even when every row has ended (processes that must run the
    same number of forwards, e.g. under FSDP)."""
    device = next(model.parameters()).device
    G, N = num_generations, len(prompts) * num_generations
    rows = [p for p in prompts for _ in range(G)]
    T = max(len(p) for p in rows)
    ids = torch.zeros(N, T, dtype=torch.long, device=device)
    mask = torch.zeros(N, T, dtype=torch.long, device=device)
    for i, p in enumerate(rows):  # left-padded, as the engine takes prompts
        ids[i, T - len(p):] = torch.tensor(p, device=device)
        mask[i, T - len(p):] = 1
    per_prompt = isinstance(generator, list)
    groups = [LoggedGroup(rows=G if per_prompt else N, do_sample=temperature > 0,
                          temperature=temperature if temperature > 0 else 1.0, generator=g)
              for g in (generator if per_prompt else [generator])]
    tokens = []
    with eval_mode(model):
        batch = DecodeBatch(model)
        tok = batch.add(ids, mask, groups, capacity=T + max_new_tokens)
        tokens.append(tok)
        ended = tok == eos_token_id
        while len(tokens) < max_new_tokens and (full_length or not bool(ended.all())):
            tok = batch.step()
            tokens.append(tok)
            ended |= tok == eos_token_id
        batch.clear()
    new = torch.stack(tokens, 1)  # (N, n)
    logps = torch.cat([torch.stack(g.logps, 1) for g in groups])  # (N, n)
    completions, finished = [], []
    for row in new.tolist():
        end = row.index(eos_token_id) + 1 if eos_token_id in row else len(row)
        completions.append(row[:end])
        finished.append(end <= len(row) and row[end - 1] == eos_token_id)
    L = max(len(p) + len(c) for p, c in zip(rows, completions))
    out_ids = torch.zeros(N, L, dtype=torch.long, device=device)
    out_mask = torch.zeros(N, L, dtype=torch.long, device=device)
    comp_mask = torch.zeros(N, L, dtype=torch.long, device=device)
    out_logps = torch.zeros(N, L, dtype=torch.float32, device=device)
    for i, (p, c) in enumerate(zip(rows, completions)):
        out_ids[i, :len(p) + len(c)] = torch.tensor(p + c, device=device)
        out_mask[i, :len(p) + len(c)] = 1
        comp_mask[i, len(p):len(p) + len(c)] = 1
        out_logps[i, len(p):len(p) + len(c)] = logps[i, :len(c)]
    return Rollout(out_ids, out_mask, comp_mask, out_logps, completions,
                   torch.tensor(finished, dtype=torch.bool, device=device))


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """logits (N, L, V) of a forward over input_ids (N, L) -> (N, L): log pi(input_ids[t] | < t) at position t
    (position 0, which nothing predicts, is 0). fp32 arithmetic."""
    N, L, V = logits.shape
    lp = -F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), input_ids[:, 1:].reshape(-1),
                          reduction="none").view(N, L - 1)
    return F.pad(lp, (1, 0))


def forward_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """(token log-probs (N, L), the forward's output) of `model` on a right-padded batch."""
    out = model(input_ids, attention_mask=attention_mask)
    return token_logps(out.logits, input_ids), out
