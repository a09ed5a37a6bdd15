"""`minimind export MODEL --format hf|gguf`: a Hugging Face directory or a GGUF file (the description is
minimind/export/__init__.py's)."""

from . import docstring_of
from .options import MODEL_HELP

DESCRIPTION = docstring_of("minimind.export")


def add_arguments(p):
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--format", required=True, choices=("hf", "gguf"),
                   help="hf: a Hugging Face directory (Llama; Mixtral for MoE); gguf: one llama.cpp file")
    p.add_argument("--out", required=True, help="hf: the directory to write; gguf: the .gguf file to write")
    p.add_argument("--dtype", default=None, help="weights precision; hf: fp32 (default), bf16, fp16; gguf: f32, "
                                                 "f16 (default), bf16, q8_0, q4_0, q4_1")
    p.add_argument("--config", default=None, help="config.json to use instead of the one beside MODEL")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out (a directory keeps files this "
                                                        "command does not write)")


def main(args):
    from ..export import export

    out = export(args.model, args.format, args.out, config=args.config, dtype=args.dtype, force=args.force)
    files = [f for f in out.rglob("*") if f.is_file()] if out.is_dir() else [out]
    size = sum(f.stat().st_size for f in files) / 1e6
    if args.format == "hf":
        print(f"exported {args.model} as a Hugging Face Llama model to {out} ({size:.1f} MB); load it with "
              f"AutoModelForCausalLM.from_pretrained({str(out)!r}) and AutoTokenizer, no custom code needed")
    else:
        print(f"exported {args.model} as GGUF to {out} ({size:.1f} MB); run it with llama.cpp: llama-cli -m {out}")
