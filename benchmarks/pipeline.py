"""Useful (non-padding) training tokens per second: our packed pipeline vs MiniMind-style padding.

MiniMind's pretraining data loader tokenizes each document on its own, truncates it to max_seq_len
and pads it up to max_seq_len, with the loss masked on the padding. The step costs the same either
way (same tensor shapes), so what differs is how many of the tokens in a batch are real text. Both
pipelines here run real training steps (forward + backward + AdamW) on the built-in corpus, and the
useful tokens of each batch are counted.

    python benchmarks/pipeline.py                    # tiny preset, seq 512, batch 8, CPU
    python benchmarks/pipeline.py --preset small --steps 5
"""

import argparse
import time

import torch

from minimind import MiniMindForCausalLM, preset
from minimind.data import corpus
from minimind.data.datasets import PretrainDataset, collate
from minimind.tokenizer import load_tokenizer


def padded_batches(texts, tokenizer, seq_len, batch):
    """MiniMind-style: one document per row, truncated and padded to seq_len, loss masked on padding."""
    rows = []
    for text in texts:
        ids = [tokenizer.bos_token_id] + tokenizer.encode(text, add_special_tokens=False)[: seq_len - 2] + [
            tokenizer.eos_token_id]
        pad = seq_len - len(ids)
        rows.append({"input_ids": torch.tensor(ids + [tokenizer.pad_token_id] * pad),
                     "labels": torch.tensor(ids + [-100] * pad)})
        if len(rows) == batch:
            yield collate(rows)
            rows = []


def packed_batches(dataset, batch):
    for start in range(0, len(dataset) - batch + 1, batch):
        yield collate([dataset[i] for i in range(start, start + batch)])


def run(model, batches, steps):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    useful, t0 = 0, None
    for i, b in zip(range(steps + 1), batches):
        if i == 1:  # the first step is warm-up
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(b["input_ids"], labels=b["labels"])
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 1:
            useful += int((b["labels"] != -100).sum())
    return useful / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    tok = load_tokenizer()
    texts = corpus.pretrain_texts("train")
    torch.manual_seed(0)
    model = MiniMindForCausalLM(preset(args.preset)).train()

    lengths = [len(tok.encode(t, add_special_tokens=False)) + 2 for t in texts]
    kept = sum(min(n, args.seq) for n in lengths)
    print(f"built-in corpus: {len(texts):,} documents, median {sorted(lengths)[len(lengths) // 2]} tokens; "
          f"padding to {args.seq} keeps {kept / (len(texts) * args.seq):.1%} real tokens and truncates "
          f"{1 - kept / sum(lengths):.1%} of the text")
    packed = run(model, packed_batches(PretrainDataset(None, tok, args.seq), args.batch), args.steps)
    padded = run(model, padded_batches(texts, tok, args.seq, args.batch), args.steps)
    print(f"| pipeline | useful tokens/s |\n|---|---|\n| packed (minimind) | {packed:,.0f} |\n"
          f"| padded to max_seq_len (MiniMind-style) | {padded:,.0f} |\n| ratio | {packed / padded:.1f}x |")


if __name__ == "__main__":
    main()
