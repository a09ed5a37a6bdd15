"""Text generation, written by hand: the decode loop over the model's preallocated KV cache, sampling filters
(temperature, top-k, top-p), repetition penalty, stop strings, seeds, batches of left-padded prompts, and
streaming text that never splits a UTF-8 character.

    from minimind.checkpoint import load_model
    from minimind.infer.generate import generate_text, stream

    model, tokenizer = load_model("out")
    print(generate_text(model, tokenizer, ["In the beginning", "Python is"], max_new_tokens=40)[0])
    for piece in stream(model, tokenizer, "In the beginning", max_new_tokens=40, do_sample=True, seed=0):
        print(piece, end="", flush=True)

`model.generate(input_ids, attention_mask=..., max_new_tokens=..., do_sample=..., ...)` (Hugging Face's calling
convention) lands in `minimind.infer.hf_generate.hf_generate` and returns prompt + new tokens as a LongTensor
(B, T + n).

Layers, bottom up:
- `generate_tokens`: the decode loop. Yields the next token of every row, step by step, from one
  `minimind.infer.engine.DecodeBatch` (the decode engine the server shares): one prefill of the whole prompt, then
  one forward of one token per row per step, writing into a KV cache preallocated to exactly
  prompt + max_new_tokens (no reallocation, no `cat`); a batch without padding passes no mask and no positions at
  all, so the model takes its causal fast path. One row on a CPU (the default, no flags): the prefill through the
  model's forward, then each step as one C++ call (`minimind.kernels.native`), for dense and mixture-of-experts
  models in fp32, bf16, int8 and int4, no torch.compile; other models and devices step through the model's
  forward. `compile=True` compiles the prefill and the batched steps (minutes the first time).
- `generate`: tokens in, tokens out (B, T + n); stops rows at eos or at a stop string and pads them after.
- `stream_batch` / `stream` / `generate_text`: text in, text out, through `TextStream`, which turns token ids into
  text pieces incrementally, holding back an incomplete UTF-8 character and any tail that may begin a stop string
  (stop strings end the text and are not part of it).

Batches: prompts of different lengths are left-padded; the attention mask covers past + current tokens and each row's
positions start at 0 at its first real token, so a row gives the same tokens as the prompt alone. Repetition penalty
counts only real (unpadded) tokens for the same reason.
"""

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from .engine import DecodeBatch, Group, eval_mode
from .sampling import as_id_list, as_stop_list, check_settings, make_generator
from .textstream import TextStream

# --- the decode loop -----------------------------------------------------------------------------------------------

def generate_tokens(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    max_new_tokens: int = 20, do_sample: bool = False, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
                    min_new_tokens: int = 0, eos_token_id=None, generator: torch.Generator | None = None,
                    use_cache: bool = True, compile: bool = False) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,) LongTensor, once per step for up to `max_new_tokens` steps.

    input_ids (B, T), left-padded where `attention_mask` (B, T) has zeros. The loop does not stop by itself at eos:
    the caller decides (stop iterating, or `close()`); eos ids are only needed here for `min_new_tokens`.
    `use_cache=False` recomputes the whole sequence every step (slow; for checking the cache). One `DecodeBatch`
    of one group, its cache preallocated to exactly prompt + max_new_tokens.
    """
    check_settings(max_new_tokens, temperature, top_k, top_p, repetition_penalty, min_new_tokens)
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be (batch, length) with length >= 1, got shape {tuple(input_ids.shape)}")
    B, T = input_ids.shape
    total = T + max_new_tokens
    limit = model.config.max_position_embeddings
    if total > limit:
        raise ValueError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) = {total} exceeds the model's "
                         f"context of {limit} tokens (max_position_embeddings); shorten the prompt or ask for fewer "
                         "new tokens")
    if max_new_tokens == 0:
        return
    batch = DecodeBatch(model, compile=compile, use_cache=use_cache)
    group = Group(B, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                  repetition_penalty=repetition_penalty, min_new_tokens=min_new_tokens, eos_token_id=eos_token_id,
                  generator=generator)
    with eval_mode(model):  # no dropout while generating; the mode is restored when the loop ends
        yield batch.add(input_ids, attention_mask, [group], capacity=total)
        for _ in range(max_new_tokens - 1):
            yield batch.step()


def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_new_tokens: int = 20,
             do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             repetition_penalty: float = 1.0, min_new_tokens: int = 0, eos_token_id=None,
             pad_token_id: int | None = None, stop_strings: Iterable[str] | None = None, tokenizer=None,
             seed: int | None = None, generator: torch.Generator | None = None, streamer=None,
             use_cache: bool = True, compile: bool = False, check_every: int | None = None) -> torch.Tensor:
    """input_ids (B, T) -> (B, T + n): the prompts followed by the new tokens, as Hugging Face's generate.

    A row ends at its first eos (kept) or when its text contains a stop string (needs `tokenizer`; the token that
    completed it is kept, as in Hugging Face); later positions hold `pad_token_id` (default: the first eos id).
    Generation ends when every row has ended, or after `max_new_tokens`, so n <= max_new_tokens.
    `seed` (or a seeded `generator`) makes sampling reproducible. `streamer`: a Hugging Face streamer
    (`put(tensor)` / `end()`, e.g. `TextStreamer`), given the prompt and then each step's tokens.
    `check_every`: test whether every row has ended once per this many steps (default: 1 on CPU; 8 on a GPU, where
    the test waits for the GPU); the result is the same, only the time differs.
    """
    eos_ids = as_id_list(eos_token_id)
    if pad_token_id is None:
        pad_token_id = eos_ids[0] if eos_ids else 0
    stops = as_stop_list(stop_strings)
    if stops and tokenizer is None:
        raise ValueError("stop_strings need the tokenizer to read the text: pass tokenizer=...")
    generator = generator if generator is not None else make_generator(seed, input_ids.device)
    B, T = input_ids.shape
    out = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=input_ids.device)
    out[:, :T] = input_ids
    ends = RowEnds(B, max_new_tokens, eos_ids, stops, tokenizer, input_ids.device)
    # On a GPU, asking "all finished?" forces a sync; ask every few steps there (the extra steps are cut off below).
    check_every = check_every or (1 if input_ids.device.type == "cpu" else 8)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    n = 0
    steps = generate_tokens(model, input_ids, attention_mask, max_new_tokens, do_sample, temperature, top_k, top_p,
                            repetition_penalty, min_new_tokens, eos_ids, generator, use_cache, compile)
    try:
        for nxt in steps:
            nxt = nxt.masked_fill(ends.finished, pad_token_id)
            out[:, T + n] = nxt
            n += 1
            if streamer is not None:
                streamer.put(nxt.cpu())
            ends.update(nxt, n)
            if ends.possible and n % check_every == 0 and bool(ends.finished.all()):
                n = int(ends.length.max())  # the step at which the last row ended
                break
    finally:
        steps.close()
        if streamer is not None:
            streamer.end()
    return out[:, :T + n]


class RowEnds:
    """Which rows of a batch have ended, and after how many new tokens: a row ends at its first eos id (kept) or
    once its text holds a stop string (the token that completed it kept). `finished` (B,) bool; `length` (B,) each
    row's new tokens up to and including its end (max_new_tokens while it runs). `possible`: whether a row can end
    at all (there are eos ids or stop strings)."""

    def __init__(self, rows: int, max_new_tokens: int, eos_ids: list[int], stops: list[str], tokenizer, device):
        self.eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
        self.finished = torch.zeros(rows, dtype=torch.bool, device=device)
        self.length = torch.full((rows,), max_new_tokens, dtype=torch.long, device=device)
        self.texts = [TextStream(tokenizer, stops) for _ in range(rows)] if stops else None
        self.possible = bool(len(self.eos)) or self.texts is not None

    def update(self, tokens: torch.Tensor, n: int):
        """tokens (B,): every row's n-th new token (padding in the rows that had ended)."""
        if len(self.eos):
            ended = torch.isin(tokens, self.eos) & ~self.finished
            self.length.masked_fill_(ended, n)
            self.finished |= ended
        if self.texts is not None:
            for b, token in enumerate(tokens.tolist()):
                if not self.finished[b]:
                    self.texts[b].push(token)
                    if self.texts[b].stopped:
                        self.finished[b], self.length[b] = True, n


@dataclass
class GenerationStats:
    """Filled in by the text functions: prompt and new tokens, prefill and decode seconds."""
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        """New tokens per second of the whole answer (prefill included)."""
        seconds = self.prefill_seconds + self.decode_seconds
        return self.new_tokens / seconds if seconds > 0 else 0.0


def encode_prompts(tokenizer, prompts, add_bos: bool = True, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts (strings, or lists of token ids) -> left-padded input_ids (B, T) and attention_mask (B, T).

    With `add_bos`, a string that does not already start with the tokenizer's bos token gets it, as every
    document in pretraining starts with it (`<|im_start|>`); chat prompts from the template already do."""
    rows = []
    for p in prompts:
        if isinstance(p, str):
            ids = tokenizer.encode(p, add_special_tokens=False)
            bos = tokenizer.bos_token_id
            if add_bos and bos is not None and (not ids or ids[0] != bos):
                ids = [bos] + ids
        else:
            ids = [int(t) for t in p]
        if not ids:
            raise ValueError("an empty prompt: give at least one token (or keep add_bos on)")
        rows.append(ids)
    T = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([[pad] * (T - len(r)) + r for r in rows], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows], dtype=torch.long, device=device)
    return input_ids, mask


def stream_batch(model, tokenizer, prompts, max_new_tokens: int = 256, stop_strings: Iterable[str] | None = None,
                 eos_token_id=None, add_bos: bool = True, stats: GenerationStats | None = None,
                 seed: int | None = None, generator: torch.Generator | None = None,
                 **settings) -> Iterator[list[str]]:
    """Text pieces for a batch of prompts: yields, per step, one (possibly empty) new piece per prompt.

    A row ends at eos (default: the tokenizer's) or at a stop string, which is not emitted. `settings` are
    `generate_tokens`' (do_sample, temperature, top_k, top_p, repetition_penalty, min_new_tokens, compile, ...).
    `stats` (a GenerationStats) is filled in as it goes."""
    device = next(model.parameters()).device
    input_ids, mask = encode_prompts(tokenizer, prompts, add_bos, device)
    if eos_token_id is None:
        eos_token_id = tokenizer.eos_token_id
    eos = set(as_id_list(eos_token_id))
    generator = generator if generator is not None else make_generator(seed, device)
    streams = [TextStream(tokenizer, stop_strings) for _ in prompts]
    done = [False] * len(prompts)
    if stats is not None:
        stats.prompt_tokens, stats.new_tokens = int(mask.sum()), 0
    start = time.perf_counter()
    steps = generate_tokens(model, input_ids, mask, max_new_tokens, eos_token_id=list(eos), generator=generator,
                            **settings)
    try:
        for step, nxt in enumerate(steps):
            pieces = []
            for b, token in enumerate(nxt.tolist()):
                if done[b]:
                    pieces.append("")
                    continue
                if stats is not None:
                    stats.new_tokens += 1
                if token in eos:
                    done[b] = True
                    pieces.append(streams[b].finish())
                    continue
                pieces.append(streams[b].push(token))
                done[b] = streams[b].stopped
            if stats is not None:
                now = time.perf_counter()
                if step == 0:
                    stats.prefill_seconds = now - start
                stats.decode_seconds = now - start - stats.prefill_seconds
            yield pieces
            if all(done):
                break
        yield [s.finish() if not d else "" for s, d in zip(streams, done)]
    finally:
        steps.close()


def stream(model, tokenizer, prompt, max_new_tokens: int = 256, **settings) -> Iterator[str]:
    """The new text for one prompt (a string or a list of token ids), piece by piece; see `stream_batch`."""
    for pieces in stream_batch(model, tokenizer, [prompt], max_new_tokens, **settings):
        if pieces[0]:
            yield pieces[0]


def generate_text(model, tokenizer, prompts, max_new_tokens: int = 256, **settings) -> list[str]:
    """The new text for each prompt (stop strings removed); see `stream_batch` for the settings."""
    texts = [""] * len(prompts)
    for pieces in stream_batch(model, tokenizer, prompts, max_new_tokens, **settings):
        texts = [t + p for t, p in zip(texts, pieces)]
    return texts


def sample(model, input_ids: torch.Tensor, max_new_tokens: int = 50, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """input_ids (B, T) -> (B, T + n): greedy when temperature == 0, else sampled; rows that ended are filled with
    eos. (The training loop's samples; `generate` is the general form.)"""
    return generate(model, input_ids, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                    temperature=temperature, top_k=top_k, top_p=top_p, eos_token_id=eos_token_id,
                    pad_token_id=eos_token_id, generator=generator)
