"""`minimind eval MODEL`: loss, per-document perplexity and bits per byte of a model over a set of texts.

    minimind eval out/                          # the built-in corpus' held-out split
    minimind eval out/ --data notes.jsonl --json
    minimind eval out/ --tasks arc_easy,hellaswag   # lm-evaluation-harness tasks instead (minimind/eval/harness.py)

How it is scored:
- Documents are scored one by one, not packed: each is tokenized as in pretraining, `<|im_start|> text <|im_end|>`,
  and every token after the first is predicted from the tokens before it in the same document (no context from
  other documents). A document longer than `seq_len` is cut into windows of `seq_len` tokens that overlap by one
  token, so each of its tokens is still predicted exactly once (with the context of its own window).
- The loss is token-weighted: total negative log-likelihood (nats) over all predicted tokens, divided by their
  number (the closing `<|im_end|>` included). The per-document perplexity = exp(loss). It is not the trainer's
  packed held-out perplexity, whose sequences are cut from concatenated documents (a token there may see the end
  of the previous document, and no document starts fresh): compare like with like.
- Bits per byte = total nats / ln 2 / total UTF-8 bytes of the texts scored: comparable across tokenizers,
  unlike perplexity.

Windows are sorted by length and batched (right-padded; padding is causal-masked by position and excluded from the
loss), about `batch_tokens` tokens per batch.
"""

import math

import torch
import torch.nn.functional as F


def document_windows(ids: list[int], seq_len: int) -> list[list[int]]:
    """A document's tokens -> windows of at most seq_len tokens, each starting with the last token of the one before
    (its context), so that every token but the first is a prediction target exactly once."""
    if len(ids) <= seq_len:
        return [ids]
    step = seq_len - 1
    return [ids[i:i + seq_len] for i in range(0, len(ids) - 1, step)]


@torch.no_grad()
def evaluate(model, tokenizer, texts, seq_len: int | None = None, batch_tokens: int = 4096,
             progress: bool | None = False, add_special_tokens: bool = True) -> dict:
    """Score `texts` (an iterable of strings) with `model`.

    Returns {"loss", "perplexity" (per-document), "bits_per_byte", "tokens" (predicted), "bytes", "documents",
    "seq_len"}.
    `seq_len`: the window length (default: 512, or the model's context when shorter).
    `add_special_tokens`: wrap each document in the tokenizer's bos/eos as pretraining does.
    `progress`: a tqdm bar over the tokens (None: only when stderr is a terminal)."""
    from tqdm import tqdm

    if seq_len is None:
        seq_len = min(512, model.config.max_position_embeddings)
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    if seq_len > model.config.max_position_embeddings:
        raise ValueError(f"seq_len {seq_len} exceeds the model's max_position_embeddings "
                         f"({model.config.max_position_embeddings})")
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to evaluate")
    windows, n_bytes = text_windows(tokenizer, texts, seq_len, add_special_tokens)

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    total_nats, total_tokens = 0.0, 0
    bar = tqdm(total=sum(len(w) - 1 for w in windows), unit="tok", desc="eval", disable=None if progress is None
               else not progress, dynamic_ncols=True)
    try:
        i = 0
        while i < len(windows):
            batch = windows[i:i + max(1, batch_tokens // len(windows[i]))]
            i += len(batch)
            nats, count = batch_nats(model, batch, pad, device)
            total_nats += nats
            total_tokens += count
            bar.update(count)
    finally:
        bar.close()
        model.train(was_training)
    loss = total_nats / total_tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 700)),
            "bits_per_byte": total_nats / math.log(2) / n_bytes if n_bytes else float("nan"),
            "tokens": total_tokens, "bytes": n_bytes, "documents": len(texts), "seq_len": seq_len}


def text_windows(tokenizer, texts: list[str], seq_len: int, add_special_tokens: bool) -> tuple[list[list[int]], int]:
    """The windows of all `texts` (each tokenized as in pretraining, then cut by `document_windows`), longest
    first, and the UTF-8 bytes of the texts that have a token to predict. A ValueError when none has one."""
    bos = [tokenizer.bos_token_id] if add_special_tokens and tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if add_special_tokens and tokenizer.eos_token_id is not None else []
    encodings = tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    windows, n_bytes = [], 0
    for text, e in zip(texts, encodings):
        ids = bos + e.ids + eos
        if len(ids) >= 2:  # something to predict
            windows += document_windows(ids, seq_len)
            n_bytes += len(text.encode("utf-8"))
    if not windows:
        raise ValueError("the texts hold no tokens to predict (each needs at least two tokens)")
    windows.sort(key=len, reverse=True)  # similar lengths together; the longest first, so memory peaks early
    return windows, n_bytes


@torch.no_grad()
def batch_nats(model, batch: list[list[int]], pad: int, device) -> tuple[float, int]:
    """One forward over windows right-padded to the first (the longest): their summed negative log-likelihood
    (nats, every token after a window's first predicted from the tokens before it) and the tokens predicted."""
    L = len(batch[0])
    ids = torch.full((len(batch), L), pad, dtype=torch.long)
    targets = torch.full((len(batch), L), -100, dtype=torch.long)  # targets[t] = ids[t + 1]
    for b, w in enumerate(batch):
        ids[b, :len(w)] = torch.tensor(w)
        targets[b, :len(w) - 1] = torch.tensor(w[1:])
    ids, targets = ids.to(device), targets.to(device)
    logits = model(ids).logits  # (B, L, V); right padding is never attended to by real tokens (causal)
    nats = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")
    return float(nats), int((targets != -100).sum())


@torch.no_grad()
def score_tokens(model, sequences: list[list[int]], top: int = 0, batch_tokens: int = 4096) -> list[dict]:
    """Log-probabilities of each token of each sequence given the tokens before it (no sampling settings: the
    model's own distribution, in fp32), as lm-evaluation-harness and OpenAI's `logprobs` read them.

    Returns, per sequence, {"logprobs": [log p(t_j | t_<j) for j = 1 .. n-1], "greedy": [t_j is the argmax],
    "top": [[(token id, log p), ...] the `top` most likely at position j, best first]} (top empty when top=0).
    Sequences are batched right-padded, about `batch_tokens` tokens per forward pass."""
    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    out: list[dict | None] = [None] * len(sequences)
    i = 0
    while i < len(order):
        L = max(1, len(sequences[order[i]]))
        chunk = order[i:i + max(1, batch_tokens // L)]
        i += len(chunk)
        ids = torch.zeros((len(chunk), L), dtype=torch.long)
        for b, k in enumerate(chunk):
            ids[b, :len(sequences[k])] = torch.tensor(sequences[k], dtype=torch.long)
        logp = torch.log_softmax(model(ids.to(device)).logits.float(), dim=-1)  # (B, L, V); causal: padding unseen
        for b, k in enumerate(chunk):
            n = len(sequences[k])
            if n < 2:
                out[k] = {"logprobs": [], "greedy": [], "top": []}
                continue
            pred = logp[b, :n - 1]  # (n-1, V): position j-1 predicts token j
            targets = ids[b, 1:n].to(pred.device)
            chosen = pred.gather(-1, targets[:, None])[:, 0]
            best = pred.argmax(-1)
            entry = {"logprobs": chosen.tolist(), "greedy": (best == targets).tolist(), "top": []}
            if top:
                values, indices = pred.topk(top, dim=-1)  # (n-1, top)
                entry["top"] = [list(zip(ix, v)) for ix, v in zip(indices.tolist(), values.tolist())]
            out[k] = entry
    return out
