"""Data tools. `minimind data prepare` tokenizes a corpus once into uint16 memory-mapped shards plus index.json;
pass the folder as training data. `minimind data stats` counts documents, characters and tokens. `minimind data
tooluse` writes the built-in tool-use SFT set."""


def add_arguments(p):
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    d = actions.add_parser("prepare", help="tokenize a corpus into memory-mapped shards",
                           description="Tokenize a pretraining corpus once (documents wrapped in <|im_start|> ... "
                                       "<|im_end|>) into OUT/shard-NNNNN.bin files and OUT/index.json.")
    d.add_argument("--data", required=True, help="file, folder or glob of .jsonl ({\"text\": ...}), .txt or .parquet")
    d.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the shipped 6400-token one)")
    d.add_argument("--out", required=True, help="directory to write the shards and index.json to")
    d.add_argument("--shard_tokens", type=int, default=2**28, help="about this many tokens per shard file "
                                                                   "(default: %(default)s)")
    d.add_argument("--skip_bad_records", action="store_true", help="warn about bad records instead of stopping")
    d = actions.add_parser("stats", help="documents, characters and tokens of a corpus",
                           description="Count documents, characters and tokens of a pretraining corpus; with no "
                                       "--data, report the built-in corpus per source and split.")
    d.add_argument("--data", default=None, help="file, folder or glob (default: the built-in corpus)")
    d.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the shipped one)")
    d.add_argument("--skip_bad_records", action="store_true", help="warn about bad records instead of stopping")
    d = actions.add_parser("tooluse", help="write the built-in tool-use SFT set",
                           description="Write the built-in tool-use conversations (calculator, unit conversion, "
                                       "dates; see minimind/data/tooluse.py) as .jsonl, to train on with "
                                       "`minimind train --stage sft --data OUT`; with --prompts, calculator "
                                       "questions and their answers for `minimind agent --data OUT`.")
    d.add_argument("--out", required=True, help=".jsonl file to write")
    d.add_argument("--n", type=int, default=3000, help="conversations (default: %(default)s)")
    d.add_argument("--split", choices=("train", "val"), default="train", help="train, or the held-out questions")
    d.add_argument("--prompts", action="store_true", help="write {\"prompt\", \"answer\"} records of the train "
                                                          "phrasings instead, for agent RL")


def main(args):
    {"prepare": prepare, "stats": stats, "tooluse": tooluse}[args.action](args)


def tooluse(args):
    from ..data.tooluse import agent_prompts, write_jsonl, write_tool_conversations

    if args.prompts:
        if args.split != "train":
            raise ValueError("--prompts writes the train phrasings; the held-out ones are minimind eval's")
        out = write_jsonl(agent_prompts(args.n), args.out)
        print(f"wrote {args.n} calculator prompts with answers to {out}")
        return
    out = write_tool_conversations(args.out, args.n, args.split)
    print(f"wrote {args.n} tool-use conversations ({args.split}) to {out}")


def prepare(args):
    import time
    from pathlib import Path

    from ..data.tokens import prepare_shards
    from ..io import DiskFullError, disk_full
    from ..tokenizer import load_tokenizer

    start = time.perf_counter()
    try:
        index = prepare_shards(args.data, load_tokenizer(args.tokenizer), args.out,
                               shard_tokens=args.shard_tokens, skip_bad_records=args.skip_bad_records)
    except OSError as e:
        if not disk_full(e, Path(args.out)):  # (numpy's writer loses the errno: "N requested and M written")
            raise
        # prepare_shards removed the shards of any earlier run first: every shard there now is this run's, the last
        # one maybe cut short, and there is no index.json (written last): none of them is of use
        for shard in Path(args.out).glob("shard-*.bin"):
            shard.unlink()
        if isinstance(e, DiskFullError):
            raise
        raise DiskFullError(Path(args.out) / "shard-NNNNN.bin") from e
    seconds = time.perf_counter() - start
    print(f"{index['documents']:,} documents, {index['characters']:,} characters -> {index['tokens']:,} tokens "
          f"in {len(index['shards'])} shard(s), {seconds:.1f}s ({index['tokens'] / seconds:,.0f} tokens/s); "
          f"saved to {args.out}")


def stats(args):
    from ..data import corpus
    from ..data.files import read_texts
    from ..data.tokens import tokenize_stream
    from ..tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    if args.data is None:
        print(corpus.format_report(corpus.report(tokenizer)))
        return
    _, counts = tokenize_stream(read_texts(args.data, args.skip_bad_records), tokenizer)
    print(f"{args.data}: {counts['documents']:,} documents, {counts['characters']:,} characters, "
          f"{counts['tokens']:,} tokens (with bos/eos)")
