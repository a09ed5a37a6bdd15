"""Continue a prompt with a model. The prompt is continued as plain text (it gets the <|im_start|> that begins every
pretraining document); --chat wraps it as a user message in the chat template instead."""

import sys

from .options import add_model_flags, add_sampling_flags, load_for_inference, sampling_settings


def add_arguments(p):
    add_model_flags(p)
    p.add_argument("--prompt", action="append", required=True, help="the text to continue; repeat for a batch")
    add_sampling_flags(p, 256)
    p.add_argument("--stream", action="store_true", help="print the text as it is generated")
    p.add_argument("--num_samples", type=int, default=1, help="samples per prompt (default: %(default)s)")
    p.add_argument("--chat", action="store_true", help="format the prompt as a chat message (SFT models)")
    p.add_argument("--no_bos", action="store_true", help="do not put <|im_start|> before the prompt")


def main(args):
    from ..data.messages import prompt_text
    from ..infer.generate import GenerationStats, generate_text, stream
    from ..infer.sampling import make_generator

    model, tokenizer = load_for_inference(args)
    if args.num_samples < 1:
        raise ValueError(f"--num_samples must be at least 1, got {args.num_samples}")
    prompts = args.prompt
    if args.chat:
        prompts = [prompt_text(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    settings = sampling_settings(args)
    generator = make_generator(args.seed, next(model.parameters()).device)
    jobs = [(shown, prompt) for shown, prompt in zip(args.prompt, prompts) for _ in range(args.num_samples)]
    if args.compile and args.show_speed:  # compile before the timing: the same batch, greedy, the text dropped
        warm_up = [jobs[0][1]] if args.stream else [p for _, p in jobs]
        generate_text(model, tokenizer, warm_up, args.max_new_tokens, add_bos=not args.no_bos, compile=True)
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

