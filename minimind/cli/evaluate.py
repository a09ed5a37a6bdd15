"""`minimind eval MODEL`: loss, perplexity, bits per byte on held-out text (the description is
minimind/eval/perplexity.py's), lm-evaluation-harness tasks with --tasks (minimind/eval/harness.py), or the
calculator agent's exact answers on held-out questions with --tasks tooluse (minimind/eval/tooluse.py)."""

from . import docstring_of
from .options import add_model_flags, load_for_inference

DESCRIPTION = docstring_of("minimind.eval.perplexity")


def add_arguments(p):
    add_model_flags(p)
    p.add_argument("--data", default=None, help="file, folder or glob of .jsonl ({\"text\": ...}), .txt or .parquet "
                                                "(default: the built-in corpus' held-out split)")
    p.add_argument("--seq_len", type=int, default=None, help="window length (default: the training run's "
                                                             "max_seq_len, else 512)")
    p.add_argument("--batch_tokens", type=int, default=4096, help="tokens per forward pass (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N documents")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--skip_bad_records", action="store_true", help="warn about bad records instead of stopping")
    g = p.add_argument_group("lm-evaluation-harness (pip install -e \".[eval]\")")
    g.add_argument("--tasks", default=None, help="run these lm-eval tasks instead of --data, comma-separated (e.g. "
                                                 "arc_easy,hellaswag,ceval-valid,cmmlu); --limit: examples per task. "
                                                 "tooluse: a tool-use model's exact answers with the calculator "
                                                 "on held-out questions (no lm-eval; --limit: questions, default "
                                                 "200)")
    g.add_argument("--base_url", default=None, help="--tasks tooluse: ask a running server (e.g. "
                                                    "http://127.0.0.1:8000/v1) through the OpenAI protocol instead; "
                                                    "MODEL is the model name sent")
    g.add_argument("--api_key", default="none", help="--base_url: the server's API key")
    g.add_argument("--include_path", default=None, help="a folder of your own lm-eval task YAML files")
    g.add_argument("--num_fewshot", type=int, default=None, help="examples in the prompt (default: each task's)")
    g.add_argument("--batch_size", type=int, default=16, help="sequences per forward pass (default: %(default)s)")
    g.add_argument("--output_path", default=None, help="write lm-eval's results as JSON: a .json file, or a folder "
                                                       "that gets results.json (tooluse: a .json file)")


def main(args):
    import json

    from ..checkpoint import training_args
    from ..data import corpus
    from ..data.files import read_texts
    from ..eval.perplexity import evaluate

    if args.tasks is not None and args.tasks.strip() == "tooluse":
        return run_tooluse(args)
    if args.tasks is not None:
        return run_harness(args)
    model, tokenizer = load_for_inference(args)
    texts = corpus.pretrain_texts("val") if args.data is None else list(read_texts(args.data, args.skip_bad_records))
    if args.limit:
        texts = texts[:args.limit]
    seq_len = args.seq_len or training_args(args.model).get("max_seq_len") or 512
    seq_len = min(int(seq_len), model.config.max_position_embeddings)
    result = evaluate(model, tokenizer, texts, seq_len=seq_len, batch_tokens=args.batch_tokens, progress=None)
    data = args.data or "the built-in held-out split"
    if args.json:
        print(json.dumps({"model": args.model, "data": data, **result}))
    else:
        print(f"{args.model} on {data}: loss {result['loss']:.4f}, per-document perplexity {result['perplexity']:.2f}, "
              f"bits per byte {result['bits_per_byte']:.4f} ({result['tokens']:,} tokens predicted, "
              f"{result['bytes']:,} bytes, {result['documents']:,} documents, windows of {seq_len})")


def run_harness(args):
    """--tasks: lm-evaluation-harness in-process (minimind.eval.harness); prints its table (or, with --json, its
    results) and writes its JSON to --output_path."""
    import importlib.util
    import json

    from ..eval.harness import INSTALL, results_table, run_tasks

    if importlib.util.find_spec("lm_eval") is None:
        raise ValueError(INSTALL)
    if args.data is not None:
        raise ValueError("give --data (loss and perplexity on your texts) or --tasks (lm-eval tasks), not both")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise ValueError("--tasks: give one or more lm-eval task names, comma-separated")
    model, tokenizer = load_for_inference(args)
    results = run_tasks(model, tokenizer, tasks, include_path=args.include_path, num_fewshot=args.num_fewshot,
                        limit=args.limit, batch_size=args.batch_size, output_path=args.output_path)
    if args.json:
        print(json.dumps({"model": args.model, "results": results["results"]}, default=str))
    else:
        print(results_table(results))
    return results


def run_tooluse(args):
    """--tasks tooluse: the report of minimind.eval.tooluse on --limit held-out questions (default 200), from the
    model in-process, or from a server with --base_url."""
    import json
    import time
    from pathlib import Path

    from ..eval.tooluse import served_report, tooluse_report

    if args.data is not None:
        raise ValueError("give --data (loss and perplexity on your texts) or --tasks tooluse, not both")
    start = time.perf_counter()
    n = args.limit or 200
    if args.base_url:
        report = served_report(args.base_url, n, model=args.model, api_key=args.api_key)
    else:
        model, tokenizer = load_for_inference(args)
        report = tooluse_report(model, tokenizer, n)
    if args.output_path:
        from ..io import atomic_write

        with atomic_write(args.output_path) as tmp:
            Path(tmp).write_text(json.dumps({"model": args.model, "base_url": args.base_url, "tooluse": report},
                                            ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps({"model": args.model, "tooluse": report}, ensure_ascii=False))
        return report
    print(f"{args.model}: {n} held-out arithmetic questions with the calculator ({time.perf_counter() - start:.0f} s)")
    print(f"{'':10} {'questions':>9} {'well-formed call':>17} {'right call':>11} {'exact answer':>13}")
    for key in ("all", "seen", "unseen", "en", "zh"):
        if key in report:
            r = report[key]
            print(f"{key:10} {r['questions']:>9} {r['well_formed']:>17.1%} {r['right_call']:>11.1%} "
                  f"{r['exact']:>13.1%}")
    return report
