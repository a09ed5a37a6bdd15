"""Choosing the next token: sampling filters (temperature, top-k, top-p), CTRL's repetition penalty, seeded
generators, and the checks of these settings. Everything that generates chooses through these functions.
"""

import torch

# --- sampling ------------------------------------------------------------------------------------------------------

def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """logits (B, V) with everything outside the top-k and outside the top-p nucleus set to -inf.

    top-k keeps the k largest logits (and ties with the k-th); top-p keeps the smallest set of most likely tokens
    whose probability reaches top_p (a token is dropped once the mass of the tokens before it reaches top_p)."""
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        remove = probs.cumsum(-1) - probs >= top_p  # the mass before this token already reaches top_p
        remove[..., 0] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


MIN_TEMPERATURE = 1e-6  # a lower sampling temperature samples as this one does (greedy but for near-ties); below
# it, logits / temperature could overflow float32


def token_chooser(do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, generator: torch.Generator | None = None):
    """A function logits (B, V) -> next tokens (B,): argmax when greedy, else a draw from the filtered softmax.

    Built once before the decode loop, so a step does no settings checks. temperature 0 is greedy."""
    if not do_sample or temperature == 0:
        return lambda logits: logits.argmax(-1)

    def choose(logits):
        logits = sampling_logits(logits, temperature, top_k, top_p)
        return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
    return choose


def sampling_logits(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                    top_p: float | None = None) -> torch.Tensor:
    """logits (B, V) -> the float32 logits sampling draws from: top-k, then temperature, then top-p, finite for any
    finite logits and temperature (a softmax of them never holds NaN)."""
    logits = filter_logits(logits.float(), top_k)  # before any arithmetic, whose rounding could make ties
    # the largest logit made 0 first: the rest are <= 0, so huge logits or a tiny temperature cannot overflow to
    # inf (and inf - inf = NaN); softmax does not change
    logits = (logits - logits.amax(-1, keepdim=True)) / max(temperature, MIN_TEMPERATURE)
    return filter_logits(logits, top_p=top_p)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty, as Hugging Face: logits (B, V) of tokens already seen ((B, V) bool) are divided
    by `penalty` when positive and multiplied by it when negative, so a penalty > 1 makes repeats less likely."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    big = torch.finfo(penalized.dtype).max  # a tiny penalty must not overflow a logit to inf (inf - inf: NaN)
    return torch.where(seen, penalized.clamp(-big, big), logits)


def seen_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, vocab_size: int) -> torch.Tensor:
    """(B, V + 1) bool: which tokens each row's real (unpadded) prompt holds, for the repetition penalty. Padding
    lands in the extra column V; pass `seen[:, :-1]` to `apply_repetition_penalty`."""
    real = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    seen = torch.zeros(input_ids.shape[0], vocab_size + 1, dtype=torch.bool, device=input_ids.device)
    return seen.scatter_(1, input_ids.masked_fill(~real, vocab_size), True)


def check_settings(max_new_tokens, temperature, top_k, top_p, repetition_penalty, min_new_tokens=0):
    """Raise a ValueError naming the setting for values that cannot work."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if temperature is None or not 0 <= temperature < float("inf"):  # NaN too
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if repetition_penalty is None or repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {repetition_penalty!r}")
    if min_new_tokens < 0:
        raise ValueError(f"min_new_tokens must be >= 0, got {min_new_tokens!r}")


def make_generator(seed: int | None, device) -> torch.Generator | None:
    """A torch.Generator on `device` seeded with `seed` (None: use torch's global random state)."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(seed))


def as_id_list(token_ids) -> list[int]:
    """None, an int, or a list of ints -> a list of ints (Hugging Face allows several eos ids)."""
    if token_ids is None:
        return []
    if isinstance(token_ids, int):
        return [token_ids]
    return [int(t) for t in token_ids]


def as_stop_list(stop_strings) -> list[str]:
    """None, a string, or strings -> a list of non-empty stop strings."""
    if stop_strings is None:
        return []
    if isinstance(stop_strings, str):
        stop_strings = [stop_strings]
    return [s for s in stop_strings if s]
