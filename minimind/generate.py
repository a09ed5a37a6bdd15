"""Text generation, written by hand: the decode loop over the model's preallocated KV cache, sampling filters
(temperature, top-k, top-p), repetition penalty, stop strings, seeds, batches of left-padded prompts, and
streaming text that never splits a UTF-8 character.

    from minimind.checkpoint import load_model
    from minimind.generate import generate_text, stream

    model, tokenizer = load_model("out")
    print(generate_text(model, tokenizer, ["In the beginning", "Python is"], max_new_tokens=40)[0])
    for piece in stream(model, tokenizer, "In the beginning", max_new_tokens=40, do_sample=True, seed=0):
        print(piece, end="", flush=True)

`model.generate(input_ids, attention_mask=..., max_new_tokens=..., do_sample=..., ...)` (Hugging Face's calling
convention) lands in `hf_generate` here and returns prompt + new tokens as a LongTensor (B, T + n).

Layers, bottom up:
- `generate_tokens`: the decode loop. Yields the next token of every row, step by step. One prefill of the whole
  prompt, then one forward of one token per row per step, writing into a KV cache preallocated to exactly
  prompt + max_new_tokens (no reallocation, no `cat`). Everything that does not change between steps (the sampling
  function, the mask and position buffers) is built once before the loop; a batch without padding passes no mask
  and no positions at all, so the model takes its causal fast path.
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

from .model import KVCache

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


def token_chooser(do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, generator: torch.Generator | None = None):
    """A function logits (B, V) -> next tokens (B,): argmax when greedy, else a draw from the filtered softmax.

    Built once before the decode loop, so a step does no settings checks. temperature 0 is greedy."""
    if not do_sample or temperature == 0:
        return lambda logits: logits.argmax(-1)

    def choose(logits):
        logits = filter_logits(logits.float() / temperature, top_k, top_p)
        return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
    return choose


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty, as Hugging Face: logits (B, V) of tokens already seen ((B, V) bool) are divided
    by `penalty` when positive and multiplied by it when negative, so a penalty > 1 makes repeats less likely."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


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
    if temperature is None or temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
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


# --- the decode loop -----------------------------------------------------------------------------------------------

def compiled_forward(model):
    """`model.forward` under `torch.compile`, compiled once per model and kept on it.

    dynamic=True: the KV length grows every step, so one graph serves every length (the prompt and the one-token
    steps get a graph each). Inductor options: `freezing` folds the weights into the graph as constants, which lets
    it prepack them for the CPU matmul kernels (bf16 decoding on CPU: ~1.8x faster); `cpp_wrapper` calls the
    kernels from C++ rather than Python (less overhead per step). The price of freezing: weights changed after the
    first call are not seen. The first call compiles: tens of seconds."""
    fn = getattr(model, "_minimind_compiled_forward", None)
    if fn is None:
        import torch._inductor.config as inductor_config

        compiled = torch.compile(model.forward, dynamic=True)

        def fn(*args, **kwargs):
            # Graphs compile lazily, at a call, and part of Inductor reads its global config then (passing these as
            # torch.compile(options=...) loses freezing): so the options are set around every call.
            with inductor_config.patch(freezing=True, cpp_wrapper=True):
                return compiled(*args, **kwargs)
        model._minimind_compiled_forward = fn
    return fn


def generate_tokens(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    max_new_tokens: int = 20, do_sample: bool = False, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
                    min_new_tokens: int = 0, eos_token_id=None, generator: torch.Generator | None = None,
                    use_cache: bool = True, compile: bool = False) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,) LongTensor, once per step for up to `max_new_tokens` steps.

    input_ids (B, T), left-padded where `attention_mask` (B, T) has zeros. The loop does not stop by itself at eos:
    the caller decides (stop iterating, or `close()`); eos ids are only needed here for `min_new_tokens`.
    `use_cache=False` recomputes the whole sequence every step (slow; for checking the cache).
    """
    check_settings(max_new_tokens, temperature, top_k, top_p, repetition_penalty, min_new_tokens)
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be (batch, length) with length >= 1, got shape {tuple(input_ids.shape)}")
    B, T = input_ids.shape
    device = input_ids.device
    total = T + max_new_tokens
    limit = model.config.max_position_embeddings
    if total > limit:
        raise ValueError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) = {total} exceeds the model's "
                         f"context of {limit} tokens (max_position_embeddings); shorten the prompt or ask for fewer "
                         "new tokens")
    if max_new_tokens == 0:
        return

    # Built once: masks and positions only when some row is padded (else the model's causal fast path).
    padded = attention_mask is not None and not bool(attention_mask.all())
    mask = positions = None
    if padded:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids "
                             f"{tuple(input_ids.shape)}; they must match")
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("a prompt ends in padding: pad the batch on the left (tokenizer.padding_side = 'left')")
        mask = torch.ones(B, total, dtype=torch.long, device=device)  # (B, T + n), grows by a column per step
        mask[:, :T] = attention_mask
        positions = torch.zeros(B, total, dtype=torch.long, device=device)  # row b starts at 0 at its first token
        positions[:, :T] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        positions[:, T:] = positions[:, T - 1:T] + torch.arange(1, max_new_tokens + 1, device=device)
    choose = token_chooser(do_sample, temperature, top_k, top_p, generator)
    eos = torch.tensor(as_id_list(eos_token_id), dtype=torch.long, device=device)
    seen = None
    if repetition_penalty != 1.0:
        seen = seen_tokens(input_ids, attention_mask, model.config.vocab_size)
    ids = None
    if not use_cache:  # the whole sequence so far, re-run every step
        ids = torch.empty(B, total, dtype=torch.long, device=device)
        ids[:, :T] = input_ids
    forward = compiled_forward(model) if compile else model
    cache = KVCache(model.config.num_hidden_layers, capacity=total) if use_cache else None

    was_training = model.training
    model.eval()  # no dropout while generating; the mode is restored when the loop ends
    try:
        with torch.inference_mode():
            logits = forward(input_ids, attention_mask=mask[:, :T] if padded else None,
                             position_ids=positions[:, :T] if padded else None, cache=cache,
                             use_cache=use_cache, logits_to_keep=1).logits[:, -1]  # (B, V)
        for step in range(max_new_tokens):
            with torch.inference_mode():
                if seen is not None:
                    logits = apply_repetition_penalty(logits, seen[:, :-1], repetition_penalty)
                if step < min_new_tokens and len(eos):
                    logits = logits.index_fill(-1, eos, float("-inf"))
                nxt = choose(logits)  # (B,)
            yield nxt
            if step == max_new_tokens - 1:
                return
            end = T + step + 1  # tokens in the sequence once nxt is in
            with torch.inference_mode():
                if seen is not None:
                    seen.scatter_(1, nxt[:, None], True)
                if use_cache:
                    x = nxt[:, None]  # (B, 1)
                    sl = slice(end - 1, end)
                else:
                    ids[:, end - 1] = nxt
                    x = ids[:, :end]
                    sl = slice(0, end)
                logits = forward(x, attention_mask=mask[:, :end] if padded else None,
                                 position_ids=positions[:, sl] if padded else None, cache=cache,
                                 use_cache=use_cache, logits_to_keep=1).logits[:, -1]
    finally:
        model.train(was_training)


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
    device = input_ids.device
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    length = torch.full((B,), max_new_tokens, dtype=torch.long, device=device)  # new tokens of each row, its end kept
    texts = [TextStream(tokenizer, stops) for _ in range(B)] if stops else None
    # On a GPU, asking "all finished?" forces a sync; ask every few steps there (the extra steps are cut off below).
    check_every = check_every or (1 if device.type == "cpu" else 8)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    n = 0
    steps = generate_tokens(model, input_ids, attention_mask, max_new_tokens, do_sample, temperature, top_k, top_p,
                            repetition_penalty, min_new_tokens, eos_ids, generator, use_cache, compile)
    try:
        for nxt in steps:
            nxt = nxt.masked_fill(finished, pad_token_id)
            out[:, T + n] = nxt
            n += 1
            if streamer is not None:
                streamer.put(nxt.cpu())
            if len(eos):
                ended = torch.isin(nxt, eos) & ~finished
                length.masked_fill_(ended, n)
                finished |= ended
            if texts is not None:
                for b, token in enumerate(nxt.tolist()):
                    if not finished[b]:
                        texts[b].push(token)
                        if texts[b].stopped:
                            finished[b], length[b] = True, n
            if (len(eos) or texts is not None) and n % check_every == 0 and bool(finished.all()):
                n = int(length.max())  # the step at which the last row ended
                break
    finally:
        steps.close()
        if streamer is not None:
            streamer.end()
    return out[:, :T + n]


# --- text: incremental detokenizing, stop strings, streaming -----------------------------------------------------

class TextStream:
    """Token ids in, text pieces out, for one sequence.

    `push(id)` returns the new text that is safe to show: an incomplete UTF-8 character (a byte-level token may hold
    part of one) is held back until it completes, and so is any tail that could be the start of a stop string.
    When a stop string appears, the text ends just before it and `stopped` turns True. `finish()` returns the
    rest. The pieces joined equal `tokenizer.decode(ids, skip_special_tokens=True)` cut before the first stop string.

    Each push decodes only the tokens since the last clean character boundary (vLLM's prefix/read offsets), so
    streaming costs O(1) per token, not O(length).
    """

    def __init__(self, tokenizer, stop_strings: Iterable[str] = (), skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.stops = as_stop_list(stop_strings)
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = self.read = 0  # ids[prefix:read] decoded to text already; read is a character boundary
        self.text = ""  # the text decoded so far (complete characters)
        self.emitted = 0  # characters of self.text handed out
        self.stopped = False

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(int(token_id))
        known = self._decode(self.ids[self.prefix:self.read])
        new = self._decode(self.ids[self.prefix:])
        if len(new) > len(known) and not new.endswith("\ufffd"):  # "\ufffd" at the end: an unfinished character
            self.text += new[len(known):]
            self.prefix, self.read = self.read, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """The text held back so far (an unfinished character comes out as U+FFFD, as `decode` gives it)."""
        if not self.stopped:
            known = self._decode(self.ids[self.prefix:self.read])
            new = self._decode(self.ids[self.prefix:])
            self.text += new[len(known):]
            self.prefix = self.read = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        end = len(self.text)
        if self.stops and not self.stopped:
            # A stop string cannot start before `emitted`: a possible start is never handed out (below).
            hits = [i for i in (self.text.find(s, self.emitted) for s in self.stops) if i >= 0]
            if hits:
                end = min(hits)
                self.text, self.stopped = self.text[:end], True
            elif not final:
                end -= self._held_back()
        piece = self.text[self.emitted:end]
        self.emitted = end
        return piece

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of some stop string."""
        longest = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.text) - self.emitted), longest, -1):
                if self.text.endswith(s[:n]):
                    longest = n
                    break
        return longest


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


# --- Hugging Face's calling convention -----------------------------------------------------------------------------

# generate() settings taken from kwargs or a GenerationConfig, by their Hugging Face names.
HF_SETTINGS = ("max_new_tokens", "max_length", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p",
               "repetition_penalty", "eos_token_id", "pad_token_id", "stop_strings", "num_return_sequences",
               "use_cache")
# Hugging Face defaults applied when neither the call nor the model's generation_config says otherwise.
HF_DEFAULTS = {"max_length": 20, "do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0,
               "repetition_penalty": 1.0, "min_new_tokens": 0, "num_return_sequences": 1, "use_cache": True}
# GenerationConfig fields we do not implement: fine at these (default) values, an error at any other.
HF_IGNORED = {"num_beams": 1, "num_beam_groups": 1, "output_attentions": False, "output_hidden_states": False,
              "output_scores": False, "output_logits": False, "return_dict_in_generate": False, "min_length": 0,
              "length_penalty": 1.0, "early_stopping": False, "typical_p": 1.0, "no_repeat_ngram_size": 0,
              "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "renormalize_logits": False, "remove_invalid_values": False,
              "synced_gpus": False}
# Bookkeeping fields, whatever their value.
HF_BOOKKEEPING = ("bos_token_id", "decoder_start_token_id", "transformers_version", "_from_model_config")


def hf_generate(model, inputs=None, generation_config=None, streamer=None, **kwargs):
    """`model.generate(...)`: Hugging Face's arguments mapped onto `generate`. Returns (B, T + n) LongTensor.

    Settings come from the call, then `generation_config` (a GenerationConfig), then `model.generation_config`,
    then Hugging Face's defaults (max_length 20; top_k 50 when sampling). Also takes minimind's `seed`,
    `generator`, `tokenizer` (for `stop_strings`), `compile`, and `stream=True` (with `tokenizer`, one prompt):
    then it returns an iterator of text pieces instead of tokens. Beam search, logits processors and other
    Hugging Face features are refused with a clear error; `transformers.GenerationMixin.generate(model, ...)`
    still runs Hugging Face's own loop on this model."""
    input_ids = kwargs.pop("input_ids", None)
    if inputs is not None and input_ids is not None:
        raise ValueError("generate() got both `inputs` and `input_ids`; pass one")
    input_ids = inputs if inputs is not None else input_ids
    if input_ids is None:
        raise ValueError("generate() needs input_ids (B, T): the prompt tokens")
    if not torch.is_tensor(input_ids) or input_ids.dtype not in (torch.long, torch.int, torch.int32):
        raise ValueError("generate() takes input_ids as an integer tensor (B, T) of token ids")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    attention_mask = kwargs.pop("attention_mask", None)
    own = {k: kwargs.pop(k) for k in ("seed", "generator", "tokenizer", "compile") if k in kwargs}
    as_text_stream = kwargs.pop("stream", False)

    settings = {}
    for source in (model.generation_config, generation_config):
        if source is None:
            continue
        if not hasattr(source, "to_dict"):
            raise ValueError(f"generation_config must be a transformers.GenerationConfig, got {type(source).__name__}")
        for key, value in source.to_diff_dict().items():  # the fields set, not every default
            if key in HF_SETTINGS:
                if value is not None:
                    settings[key] = value
            elif key not in HF_BOOKKEEPING and value is not None and value != HF_IGNORED.get(key, ...):
                raise ValueError(f"generation_config.{key}={value!r} is not supported by minimind's generate "
                                 f"(supported: {', '.join(HF_SETTINGS)}); use transformers.GenerationMixin."
                                 "generate(model, ...) for Hugging Face's own loop")
    unknown = [k for k, v in kwargs.items() if k not in HF_SETTINGS and k not in HF_BOOKKEEPING
               and v is not None and not (k in HF_IGNORED and v == HF_IGNORED[k])]  # None / a default: fine
    if unknown:
        raise TypeError(f"generate() got unsupported argument(s) {', '.join(sorted(unknown))}; supported: "
                        f"input_ids, attention_mask, {', '.join(HF_SETTINGS)}, seed, generator, tokenizer, "
                        "streamer, stream, compile, generation_config (Hugging Face's own loop: "
                        "transformers.GenerationMixin.generate(model, ...))")
    settings.update({k: v for k, v in kwargs.items() if k in HF_SETTINGS and v is not None})
    for key, value in HF_DEFAULTS.items():
        settings.setdefault(key, value)

    T = input_ids.shape[1]
    max_new = settings.get("max_new_tokens")
    if max_new is None:
        max_new = settings["max_length"] - T
        if max_new <= 0:
            raise ValueError(f"max_length ({settings['max_length']}) leaves no room after the {T}-token prompt; "
                             "set max_new_tokens")
    n_seq = settings["num_return_sequences"]
    if as_text_stream:  # an iterator of text pieces for one prompt
        if own.get("tokenizer") is None:
            raise ValueError("stream=True needs the tokenizer to make text: pass tokenizer=...")
        if input_ids.shape[0] != 1 or n_seq > 1:
            raise ValueError("stream=True streams one prompt; for a batch use minimind.generate.stream_batch")
        prompt = input_ids[0] if attention_mask is None else input_ids[0][attention_mask[0].bool()]
        return stream(model, own.pop("tokenizer"), prompt.tolist(), max_new, do_sample=settings["do_sample"],
                      temperature=settings["temperature"], top_k=settings["top_k"], top_p=settings["top_p"],
                      repetition_penalty=settings["repetition_penalty"], min_new_tokens=settings["min_new_tokens"],
                      eos_token_id=settings.get("eos_token_id", []), stop_strings=settings.get("stop_strings"),
                      use_cache=settings["use_cache"], **own)
    if n_seq > 1:
        if not settings["do_sample"]:
            raise ValueError("num_return_sequences > 1 needs do_sample=True (greedy gives the same sequence)")
        input_ids = input_ids.repeat_interleave(n_seq, dim=0)
        attention_mask = attention_mask.repeat_interleave(n_seq, dim=0) if attention_mask is not None else None
    return generate(model, input_ids, attention_mask, max_new_tokens=max_new, do_sample=settings["do_sample"],
                    temperature=settings["temperature"], top_k=settings["top_k"], top_p=settings["top_p"],
                    repetition_penalty=settings["repetition_penalty"], min_new_tokens=settings["min_new_tokens"],
                    eos_token_id=settings.get("eos_token_id"), pad_token_id=settings.get("pad_token_id"),
                    stop_strings=settings.get("stop_strings"), streamer=streamer,
                    use_cache=settings["use_cache"], **own)
