"""Tokenizer tools. `minimind tokenizer train` trains a byte-level BPE tokenizer (special tokens <|endoftext|> 0,
<|im_start|> 1, <|im_end|> 2; ChatML chat template) and saves it as a Hugging Face tokenizer directory."""


def add_arguments(p):
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = actions.add_parser("train", help="train a tokenizer on a corpus",
                           description="Train a byte-level BPE tokenizer. With no --data, on the built-in corpus "
                                       "(this is how the shipped 6400-token tokenizer was made).")
    t.add_argument("--data", default=None, help="file, folder or glob of .jsonl ({\"text\": ...}), .txt or "
                                                ".parquet (default: the built-in corpus)")
    t.add_argument("--vocab_size", type=int, default=6400, help="vocabulary size, special tokens included "
                                                                "(default: %(default)s)")
    t.add_argument("--out", required=True, help="directory to write tokenizer.json and tokenizer_config.json to")
    t.add_argument("--skip_bad_records", action="store_true", help="warn about bad records instead of stopping")


def main(args):
    import time

    from ..data import corpus
    from ..data.files import read_texts
    from ..tokenizer import train_tokenizer

    texts = corpus.pretrain_texts("train") if args.data is None else read_texts(args.data, args.skip_bad_records)
    start = time.perf_counter()
    tokenizer = train_tokenizer(texts, args.vocab_size, args.out)
    print(f"trained a {len(tokenizer)}-token byte-level BPE tokenizer on {args.data or 'the built-in corpus'} "
          f"in {time.perf_counter() - start:.1f}s; saved to {args.out}")
