"""Tokenizer tools. `minimind tokenizer train` trains a byte-level BPE tokenizer (special tokens <|endoftext|> 0,
<|im_start|> 1, <|im_end|> 2; ChatML chat template) and saves it as a Hugging Face tokenizer directory."""


DIGITS = {0: "", 1: " (digits split)"}


def add_arguments(p):
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = actions.add_parser("train", help="train a tokenizer on a corpus",
                           description="Train a byte-level BPE tokenizer. With no --data, on the built-in corpus "
                                       "(this is how the shipped 6400-token tokenizer was made).")
    t.add_argument("--data", action="append", default=None,
                   help="file, folder or glob of .jsonl ({\"text\": ...}, or conversations as the chat template "
                        "renders them), .txt or .parquet; repeatable (default: the built-in corpus)")
    t.add_argument("--builtin", action="store_true", help="also the built-in corpus, with --data")
    t.add_argument("--split_digits", nargs="?", type=int, const=1, default=0, metavar="N",
                   help="digits in groups of at most N (default 1: every digit), each group one token: numbers read "
                        "the same in any context (for arithmetic and tool use; 3 makes 0-999 one token each)")
    t.add_argument("--vocab_size", type=int, default=6400, help="vocabulary size, special tokens included "
                                                                "(default: %(default)s)")
    t.add_argument("--out", required=True, help="directory to write tokenizer.json and tokenizer_config.json to")
    t.add_argument("--skip_bad_records", action="store_true", help="warn about bad records instead of stopping")


def main(args):
    import itertools
    import time

    from ..data import corpus
    from ..data.messages import chat_texts
    from ..tokenizer import load_tokenizer, train_tokenizer

    sources = list(args.data or [])
    texts = [chat_texts(data, load_tokenizer(), args.skip_bad_records) for data in sources]
    if args.builtin or not sources:
        texts.append(corpus.pretrain_texts("train"))
        sources.append("the built-in corpus")
    start = time.perf_counter()
    tokenizer = train_tokenizer(itertools.chain(*texts), args.vocab_size, args.out, split_digits=args.split_digits)
    digits = DIGITS.get(args.split_digits, f" (digits in groups of {args.split_digits})")
    print(f"trained a {len(tokenizer)}-token byte-level BPE tokenizer{digits} on "
          f"{' + '.join(sources)} in {time.perf_counter() - start:.1f}s; saved to {args.out}")
