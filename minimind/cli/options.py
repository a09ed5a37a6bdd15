"""Flags shared by the commands that load a model to run it (generate, chat, eval, serve), and their use."""

MODEL_HELP = ("a training output directory, a model directory (config.json + model.safetensors), or a .pth / "
              ".safetensors file with config.json beside it (or given with --config)")


def add_model_flags(p):
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--config", default=None, help="config.json to use instead of the one beside MODEL")
    p.add_argument("--adapter", default=None, help="a LoRA adapter to apply (from minimind lora)")
    p.add_argument("--device", default=None, help="cuda, cuda:N, mps or cpu (default: the best available)")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="weights precision (auto: fp32 on CPU, bf16/fp16 on GPU)")
    p.add_argument("--quantize", choices=("none", "int8", "int4"), default="none",
                   help="int8: weight-only int8 linear layers (4x smaller; on a CPU 1.6-2x faster decoding, "
                        "more with --compile); int4: q4_1-style groups of 32 (6.4x smaller, CPU only); "
                        "see minimind/quantize.py")


def add_sampling_flags(p, max_new_tokens):
    p.add_argument("--max_new_tokens", type=int, default=max_new_tokens,
                   help="most tokens to generate (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy "
                                                                  "(default: %(default)s)")
    p.add_argument("--top_k", type=int, default=50, help="sample among the k most likely tokens; 0 = off "
                                                         "(default: %(default)s)")
    p.add_argument("--top_p", type=float, default=0.9, help="sample within the smallest set of tokens of this "
                                                            "probability; 1 = off (default: %(default)s)")
    p.add_argument("--repetition_penalty", type=float, default=1.0, help="> 1 discourages repeating tokens "
                                                                         "(default: %(default)s = off)")
    p.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same sample")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop when this text appears (not printed); repeatable")
    p.add_argument("--compile", action="store_true", help="torch.compile the model first (slow start)")
    p.add_argument("--show_speed", action="store_true", help="print tokens/s after each answer")


def load_for_inference(args):
    """(model, tokenizer) from MODEL and the --config/--adapter/--device/--dtype/--quantize flags."""
    from ..checkpoint import best_device, load_model

    device = args.device or best_device()
    dtype = args.dtype  # "auto": fp32 on a CPU, half precision on a GPU (checkpoint.resolve_dtype)
    model, tokenizer = load_model(args.model, args.config, device=device, dtype=dtype, adapter=args.adapter)
    if args.quantize != "none":
        from ..lora import merge_lora
        from ..quantize import quantize_int4, quantize_int8

        quantize = quantize_int8 if args.quantize == "int8" else quantize_int4
        model = quantize(merge_lora(model) if args.adapter else model)
    return model, tokenizer


def sampling_settings(args) -> dict:
    """The sampling flags as keyword arguments of minimind.infer.generate's text functions."""
    return dict(do_sample=args.temperature > 0, temperature=args.temperature, top_k=args.top_k or None,
                top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop_strings=args.stop or None,
                compile=args.compile)
