"""Text generation: sampling (temperature, top-k, top-p) over the model's KV cache."""

import torch


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """logits (B, V) with everything outside the top-k and outside the top-p nucleus set to -inf."""
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum - sorted_logits.softmax(-1) >= top_p  # drop a token once the mass before it reaches top_p
        remove[..., 0] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


@torch.no_grad()
def sample(model, input_ids: torch.Tensor, max_new_tokens: int = 50, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """input_ids (B, T) -> (B, T + n): greedy when temperature == 0, else sampled. Stops at eos for all rows."""
    model.eval()
    out = model(input_ids, use_cache=True, logits_to_keep=1)
    cache, ids = out.past_key_values, input_ids
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        logits = out.logits[:, -1].float()
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        if eos_token_id is not None:
            nxt = nxt.masked_fill(finished, eos_token_id)
            finished |= nxt == eos_token_id
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        if eos_token_id is not None and bool(finished.all()):
            break
        out = model(nxt[:, None], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
    return ids
