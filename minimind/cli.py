"""The `minimind` command line. Each subcommand parses its flags and calls the package's functions."""

import argparse
import sys


def cmd_info(args):
    from .checkpoint import load_config
    from .info import describe

    print(describe(load_config(args.model, args.config)))


def cmd_train(args):
    from .train import resolve_args, run

    run(resolve_args(args))


def cmd_tokenizer_train(args):
    import time

    from . import corpus
    from .data import read_texts
    from .tokenizer import train_tokenizer

    texts = corpus.pretrain_texts("train") if args.data is None else read_texts(args.data, args.skip_bad_records)
    start = time.perf_counter()
    tokenizer = train_tokenizer(texts, args.vocab_size, args.out)
    print(f"trained a {len(tokenizer)}-token byte-level BPE tokenizer on {args.data or 'the built-in corpus'} "
          f"in {time.perf_counter() - start:.1f}s; saved to {args.out}")


def cmd_data_prepare(args):
    import time

    from .data import prepare_shards
    from .tokenizer import load_tokenizer

    start = time.perf_counter()
    index = prepare_shards(args.data, load_tokenizer(args.tokenizer), args.out,
                           shard_tokens=args.shard_tokens, skip_bad_records=args.skip_bad_records)
    seconds = time.perf_counter() - start
    print(f"{index['documents']:,} documents, {index['characters']:,} characters -> {index['tokens']:,} tokens "
          f"in {len(index['shards'])} shard(s), {seconds:.1f}s ({index['tokens'] / seconds:,.0f} tokens/s); "
          f"saved to {args.out}")


def cmd_data_stats(args):
    from . import corpus
    from .data import read_texts, tokenize_stream
    from .tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    if args.data is None:
        print(corpus.format_report(corpus.report(tokenizer)))
        return
    _, counts = tokenize_stream(read_texts(args.data, args.skip_bad_records), tokenizer)
    print(f"{args.data}: {counts['documents']:,} documents, {counts['characters']:,} characters, "
          f"{counts['tokens']:,} tokens (with bos/eos)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minimind", description="Train small language models from scratch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("info", help="config, parameter counts per component, weight memory",
                       description="Show a model's config, its parameter counts per component and its weight "
                                   "memory. MODEL is a preset name (tiny, small, medium, large, small-moe), a model "
                                   "directory, a config.json, or a .pth/.safetensors file with config.json beside it.")
    p.add_argument("model", metavar="MODEL_OR_PRESET")
    p.add_argument("--config", default=None, help="config.json to use instead of the one beside MODEL")
    p.set_defaults(func=cmd_info)

    from .train import __doc__ as train_doc
    from .train import add_training_flags

    p = sub.add_parser("train", help="pretrain or fine-tune (SFT) a model; same as python train.py",
                       description=train_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer",
                       description="Tokenizer tools. `minimind tokenizer train` trains a byte-level BPE tokenizer "
                                   "(special tokens <|endoftext|> 0, <|im_start|> 1, <|im_end|> 2; ChatML chat "
                                   "template) and saves it as a Hugging Face tokenizer directory.")
    tsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = tsub.add_parser("train", help="train a tokenizer on a corpus",
                        description="Train a byte-level BPE tokenizer. With no --data, on the built-in corpus "
                                    "(this is how the shipped 6400-token tokenizer was made).")
    t.add_argument("--data", default=None, help="file, folder or glob of .jsonl ({\"text\": ...}), .txt or "
                                                ".parquet (default: the built-in corpus)")
    t.add_argument("--vocab_size", type=int, default=6400, help="vocabulary size, special tokens included")
    t.add_argument("--out", required=True, help="directory to write tokenizer.json and tokenizer_config.json to")
    t.add_argument("--skip_bad_records", action="store_true", help="warn about bad records instead of stopping")
    t.set_defaults(func=cmd_tokenizer_train)

    p = sub.add_parser("data", help="prepare token shards, corpus statistics",
                       description="Data tools. `minimind data prepare` tokenizes a corpus once into uint16 "
                                   "memory-mapped shards plus index.json; pass the folder as training data. "
                                   "`minimind data stats` counts documents, characters and tokens.")
    dsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    d = dsub.add_parser("prepare", help="tokenize a corpus into memory-mapped shards",
                        description="Tokenize a pretraining corpus once (documents wrapped in <|im_start|> ... "
                                    "<|im_end|>) into OUT/shard-NNNNN.bin files and OUT/index.json.")
    d.add_argument("--data", required=True, help="file, folder or glob of .jsonl ({\"text\": ...}), .txt or .parquet")
    d.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the shipped 6400-token one)")
    d.add_argument("--out", required=True, help="directory to write the shards and index.json to")
    d.add_argument("--shard_tokens", type=int, default=2**28, help="about this many tokens per shard file")
    d.add_argument("--skip_bad_records", action="store_true", help="warn about bad records instead of stopping")
    d.set_defaults(func=cmd_data_prepare)
    d = dsub.add_parser("stats", help="documents, characters and tokens of a corpus",
                        description="Count documents, characters and tokens of a pretraining corpus; with no "
                                    "--data, report the built-in corpus per source and split.")
    d.add_argument("--data", default=None, help="file, folder or glob (default: the built-in corpus)")
    d.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the shipped one)")
    d.add_argument("--skip_bad_records", action="store_true", help="warn about bad records instead of stopping")
    d.set_defaults(func=cmd_data_stats)
    return parser


def main(argv=None):
    from .trainer import TrainingError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ValueError, TrainingError) as e:  # DataError is a ValueError
        print(f"minimind {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\nminimind {args.command}: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
