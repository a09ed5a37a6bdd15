"""Export to the formats other tools read: a Hugging Face directory (`hf.py`: Llama; Mixtral for MoE), a GGUF file
(`gguf.py`, llama.cpp's `llama` architecture), and import of the public MiniMind's checkpoints
(`import_minimind.py`).

    minimind export out/ --format hf --out out-hf
    minimind export out/ --format gguf --dtype q8_0 --out model.gguf

A dense MiniMind model *is* a Llama model with the same parameter names: the Hugging Face export is a config
translation plus the unchanged state dict, and the directory loads with plain `AutoModelForCausalLM.from_pretrained`,
no custom code. An MoE model exports as Mixtral, each shared expert folded into every routed expert (exact, since
the renormalized top-k weights sum to 1). The GGUF file permutes Q and K into llama.cpp's RoPE layout, as
llama.cpp's own converter does. Every file is written under a temporary name and renamed into place, so an
interrupted export never leaves a complete-looking file.
"""

from pathlib import Path

FORMATS = ("hf", "gguf")


def export(spec: str, fmt: str, out: str, config: str | None = None, dtype: str | None = None,
           force: bool = False) -> Path:
    """Load the model at `spec` (any MODEL that `minimind.checkpoint.load_model` takes) and export it as `fmt`
    ("hf" or "gguf") to `out`. dtype: fp32/bf16/fp16 for hf (default fp32), f32/f16/bf16/q8_0 for gguf
    (default f16)."""
    from ..checkpoint import load_model
    from ..io import check_output
    from .gguf import export_gguf
    from .hf import export_hf

    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt}: unknown export format; choose hf (Hugging Face Llama directory) or gguf "
                         "(llama.cpp / Ollama file)")
    check_output(out, force, "dir" if fmt == "hf" else "file")  # before the (slow) load; checked again on writing
    model, tokenizer = load_model(spec, config, device="cpu")
    name = Path(spec).resolve().name if Path(spec).is_dir() else Path(spec).resolve().parent.name
    try:
        if fmt == "hf":
            return export_hf(model, tokenizer, out, dtype or "fp32", force)
        return export_gguf(model, tokenizer, out, dtype or "f16", force, name=name or "minimind")
    except OSError as err:  # a folder that cannot be written, a full disk: nothing half-written is left
        raise ValueError(f"--out {out}: cannot write there ({err.strerror or err}); choose another path") from None
