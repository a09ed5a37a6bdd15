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


def cmd_lora(args):
    from .finetune import run_lora
    from .train import resolve_args

    run_lora(resolve_args(args))


def cmd_dpo(args):
    from .finetune import run_dpo
    from .train import resolve_args

    run_dpo(resolve_args(args))


def cmd_distill(args):
    from .finetune import run_distill
    from .train import resolve_args

    run_distill(resolve_args(args))


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


def load_for_inference(args):
    """(model, tokenizer) for generate / chat / eval / serve from MODEL and the shared --config/--adapter/--device/
    --dtype/--quantize flags."""
    from .checkpoint import load_model
    from .trainer import best_device

    device = args.device or best_device()
    dtype = args.dtype
    if dtype == "auto":  # fp32 on CPU; half precision on a GPU
        import torch
        dtype = "fp32" if not device.startswith("cuda") else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    model, tokenizer = load_model(args.model, args.config, device=device, dtype=dtype, adapter=args.adapter)
    if args.quantize == "int8":
        from .lora import merge_lora
        from .quantize import quantize_int8

        model = quantize_int8(merge_lora(model) if args.adapter else model)
    return model, tokenizer


def sampling_settings(args) -> dict:
    """The sampling flags as keyword arguments of minimind.generate's text functions."""
    return dict(do_sample=args.temperature > 0, temperature=args.temperature, top_k=args.top_k or None,
                top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop_strings=args.stop or None,
                compile=args.compile)


def cmd_generate(args):
    from .generate import GenerationStats, generate_text, make_generator, stream

    model, tokenizer = load_for_inference(args)
    if args.num_samples < 1:
        raise ValueError(f"--num_samples must be at least 1, got {args.num_samples}")
    prompts = args.prompt
    if args.chat:
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True) for p in prompts]
    settings = sampling_settings(args)
    generator = make_generator(args.seed, next(model.parameters()).device)
    jobs = [(shown, prompt) for shown, prompt in zip(args.prompt, prompts) for _ in range(args.num_samples)]
    stats = GenerationStats()
    if args.stream:
        for i, (shown, prompt) in enumerate(jobs):
            if len(jobs) > 1:
                print(f"--- sample {i + 1} ---")
            print("" if args.chat else shown, end="", flush=True)
            for piece in stream(model, tokenizer, prompt, args.max_new_tokens, generator=generator, stats=stats,
                                add_bos=not args.no_bos, **settings):
                print(piece, end="", flush=True)
            print()
    else:
        texts = generate_text(model, tokenizer, [p for _, p in jobs], args.max_new_tokens, generator=generator,
                              stats=stats, add_bos=not args.no_bos, **settings)
        for i, ((shown, _), text) in enumerate(zip(jobs, texts)):
            if len(jobs) > 1:
                print(f"--- sample {i + 1} ---")
            print(text if args.chat else shown + text)
    if args.show_speed:
        print(f"[{stats.new_tokens} new tokens, {stats.tokens_per_second:.1f} tokens/s]", file=sys.stderr)


def cmd_chat(args):
    from .chat import COMMANDS, ChatSession, completion_reason, run_chat

    model, tokenizer = load_for_inference(args)
    reason = "asked for with --completion" if args.completion else completion_reason(args.model, tokenizer)
    settings = sampling_settings(args)
    settings["seed"] = args.seed
    session = ChatSession(model, tokenizer, system=args.system, chat=reason is None, context=args.context,
                          max_new_tokens=args.max_new_tokens, **settings)
    if reason is None:
        banner = (f"minimind chat: {args.model} (context {session.context} tokens). Commands: {COMMANDS}; "
                  "Ctrl-C stops an answer.")
    else:
        banner = (f"minimind chat: {args.model} runs as plain completion, {reason}: each line is continued as "
                  f"text, without history. Commands: {COMMANDS}.")
    run_chat(session, show_speed=args.show_speed, banner=banner)


def cmd_eval(args):
    import json

    from . import corpus
    from .checkpoint import training_args
    from .data import read_texts
    from .evaluate import evaluate

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
        print(f"{args.model} on {data}: loss {result['loss']:.4f}, perplexity {result['perplexity']:.2f}, "
              f"bits per byte {result['bits_per_byte']:.4f} ({result['tokens']:,} tokens predicted, "
              f"{result['bytes']:,} bytes, {result['documents']:,} documents, windows of {seq_len})")


def cmd_export(args):
    from .export import export

    out = export(args.model, args.format, args.out, config=args.config, dtype=args.dtype, force=args.force)
    files = [f for f in out.rglob("*") if f.is_file()] if out.is_dir() else [out]
    size = sum(f.stat().st_size for f in files) / 1e6
    if args.format == "hf":
        print(f"exported {args.model} as a Hugging Face Llama model to {out} ({size:.1f} MB); load it with "
              f"AutoModelForCausalLM.from_pretrained({str(out)!r}) and AutoTokenizer, no custom code needed")
    else:
        print(f"exported {args.model} as GGUF to {out} ({size:.1f} MB); run it with llama.cpp: llama-cli -m {out}")


def cmd_import(args):
    from .convert import import_minimind

    result = import_minimind(args.pth, args.out, config=args.config, tokenizer=args.tokenizer,
                             num_heads=args.num_heads, force=args.force, num_experts_per_tok=args.num_experts_per_tok,
                             rope_theta=args.rope_theta, max_position_embeddings=args.max_position_embeddings)
    c = result["config"]
    kind = (f"MoE ({c.n_routed_experts} experts, {c.num_experts_per_tok} per token, {c.n_shared_experts} shared)"
            if c.use_moe else "dense")
    print(f"imported {args.pth} ({result['scheme']} MiniMind names): {result['parameters'] / 1e6:.1f}M parameters, "
          f"{kind}, hidden {c.hidden_size}, {c.num_hidden_layers} layers, {c.num_attention_heads} heads / "
          f"{c.num_key_value_heads} key-value heads, vocab {c.vocab_size}; tokenizer: {result['tokenizer']}; "
          f"saved to {result['out']}")


def cmd_serve(args):
    from .chat import completion_reason
    from .serve import run_server, served_name

    model, tokenizer = load_for_inference(args)
    run_server(model, tokenizer, model_name=args.model_name or served_name(args.model), host=args.host,
               port=args.port, api_key=args.api_key, max_tokens_limit=args.max_tokens_limit,
               max_batch=args.max_batch, max_request_bytes=args.max_request_bytes, cors_origins=args.cors_origin,
               compile=args.compile,
               note=completion_reason(args.model, tokenizer))


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

    from . import finetune

    p = sub.add_parser("lora", help="LoRA fine-tuning of a base model: saves the adapter (--merge: a full model too)",
                       description=finetune.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    finetune.add_lora_flags(p)
    p.set_defaults(func=cmd_lora)
    p = sub.add_parser("dpo", help="DPO on preference pairs (default: the built-in ones) against a frozen reference",
                       description=finetune.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    finetune.add_dpo_flags(p)
    p.set_defaults(func=cmd_dpo)
    p = sub.add_parser("distill", help="knowledge distillation: a teacher MODEL trains a smaller student",
                       description=finetune.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    finetune.add_distill_flags(p)
    p.set_defaults(func=cmd_distill)

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
    model_help = ("a training output directory, a model directory (config.json + model.safetensors), or a .pth / "
                  ".safetensors file with config.json beside it (or given with --config)")

    def add_model_flags(p):
        p.add_argument("model", metavar="MODEL", help=model_help)
        p.add_argument("--config", default=None, help="config.json to use instead of the one beside MODEL")
        p.add_argument("--adapter", default=None, help="a LoRA adapter to apply (from minimind lora)")
        p.add_argument("--device", default=None, help="cuda, cuda:N, mps or cpu (default: the best available)")
        p.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                       help="weights precision (auto: fp32 on CPU, bf16/fp16 on GPU)")
        p.add_argument("--quantize", choices=("none", "int8"), default="none",
                       help="int8: weight-only int8 linear layers (4x smaller; on a CPU 1.6-2x faster decoding, "
                            "more with --compile); see minimind/quantize.py")

    def add_sampling_flags(p, max_new_tokens):
        p.add_argument("--max_new_tokens", type=int, default=max_new_tokens,
                       help=f"most tokens to generate (default: {max_new_tokens})")
        p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy (default: 0.8)")
        p.add_argument("--top_k", type=int, default=50, help="sample among the k most likely tokens; 0 = off "
                                                             "(default: 50)")
        p.add_argument("--top_p", type=float, default=0.9, help="sample within the smallest set of tokens of this "
                                                                "probability; 1 = off (default: 0.9)")
        p.add_argument("--repetition_penalty", type=float, default=1.0, help="> 1 discourages repeating tokens "
                                                                             "(default: 1.0 = off)")
        p.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same sample")
        p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                       help="stop when this text appears (not printed); repeatable")
        p.add_argument("--compile", action="store_true", help="torch.compile the model first (slow start)")
        p.add_argument("--show_speed", action="store_true", help="print tokens/s after each answer")

    p = sub.add_parser("generate", help="complete a prompt (sampling flags, --stream, --num_samples)",
                       description="Continue a prompt with a model. The prompt is continued as plain text (it gets "
                                   "the <|im_start|> that begins every pretraining document); --chat wraps it as a "
                                   "user message in the chat template instead.")
    add_model_flags(p)
    p.add_argument("--prompt", action="append", required=True, help="the text to continue; repeat for a batch")
    add_sampling_flags(p, 256)
    p.add_argument("--stream", action="store_true", help="print the text as it is generated")
    p.add_argument("--num_samples", type=int, default=1, help="samples per prompt (default: 1)")
    p.add_argument("--chat", action="store_true", help="format the prompt as a chat message (SFT models)")
    p.add_argument("--no_bos", action="store_true", help="do not put <|im_start|> before the prompt")
    p.set_defaults(func=cmd_generate)

    from .chat import __doc__ as chat_doc
    p = sub.add_parser("chat", help="interactive multi-turn chat in the terminal, streaming",
                       description=chat_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p)
    add_sampling_flags(p, 512)
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--context", type=int, default=None, help="context window for prompt + answer (default: the "
                                                             "model's max_position_embeddings)")
    p.add_argument("--completion", action="store_true", help="plain completion instead of chat")
    p.set_defaults(func=cmd_chat)

    from .evaluate import __doc__ as eval_doc
    p = sub.add_parser("eval", help="loss, perplexity, bits per byte on held-out text",
                       description=eval_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p)
    p.add_argument("--data", default=None, help="file, folder or glob of .jsonl ({\"text\": ...}), .txt or .parquet "
                                                "(default: the built-in corpus' held-out split)")
    p.add_argument("--seq_len", type=int, default=None, help="window length (default: the training run's "
                                                             "max_seq_len, else 512)")
    p.add_argument("--batch_tokens", type=int, default=4096, help="tokens per forward pass (default: 4096)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N documents")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--skip_bad_records", action="store_true", help="warn about bad records instead of stopping")
    p.set_defaults(func=cmd_eval)

    from .serve import __doc__ as serve_doc
    from .serve import add_serve_flags
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with a web chat page",
                       description=serve_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p)
    add_serve_flags(p)
    p.set_defaults(func=cmd_serve)

    from .export import __doc__ as export_doc
    p = sub.add_parser("export", help="export to a Hugging Face directory (Llama / Mixtral) or a GGUF file "
                                      "(llama.cpp, Ollama)",
                       description=export_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help=model_help)
    p.add_argument("--format", required=True, choices=("hf", "gguf"),
                   help="hf: a Hugging Face directory (Llama; Mixtral for MoE); gguf: one llama.cpp file")
    p.add_argument("--out", required=True, help="hf: the directory to write; gguf: the .gguf file to write")
    p.add_argument("--dtype", default=None, help="weights precision; hf: fp32 (default), bf16, fp16; gguf: f32, "
                                                 "f16 (default), bf16, q8_0")
    p.add_argument("--config", default=None, help="config.json to use instead of the one beside MODEL")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out (a directory keeps files this "
                                                        "command does not write)")
    p.set_defaults(func=cmd_export)

    from .convert import __doc__ as import_doc
    p = sub.add_parser("import", help="convert a public MiniMind .pth checkpoint into a minimind model directory",
                       description=import_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pth", metavar="PTH", help="a public MiniMind state dict, e.g. full_sft_512.pth")
    p.add_argument("--out", required=True, help="the model directory to write")
    p.add_argument("--tokenizer", default=None, help="MiniMind's tokenizer folder (tokenizer.json, "
                                                     "tokenizer_config.json); default: one beside PTH, else the "
                                                     "shipped tokenizer, with a warning")
    p.add_argument("--config", default=None, help="a config.json (MiniMind's or ours) to take the architecture from "
                                                  "instead of inferring it from the tensor shapes")
    p.add_argument("--num_heads", type=int, default=None, help="attention heads, which shapes cannot tell "
                                                               "(default: 8, MiniMind's)")
    p.add_argument("--num_experts_per_tok", type=int, default=None, help="MoE: routed experts per token (default: 2)")
    p.add_argument("--rope_theta", type=float, default=None, help="RoPE base (default: 1e6, MiniMind's)")
    p.add_argument("--max_position_embeddings", type=int, default=None, help="context length (default: 32768)")
    p.add_argument("--force", action="store_true", help="write into an existing non-empty --out directory")
    p.set_defaults(func=cmd_import)
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
