"""`minimind lora`: LoRA fine-tuning. The base model (`--pretrained_path`, required) stays frozen; low-rank adapters
on its linear layers learn from SFT conversations (default: the built-in ones) with the shared trainer.

    minimind lora --pretrained_path sft_out --output_dir lora_out            # saves the adapter
    minimind lora --pretrained_path sft_out --output_dir lora_out --merge    # ... plus a merged full model

A resumed run rebuilds base + adapters before the saved state is loaded, so the optimizer (adapters only) resumes
exactly.
"""

from ..presets import LORA_TARGETS
from .train import add_training_flags


def add_arguments(p):
    add_training_flags(p, ("sft", "pretrain"))
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora_rank", type=int, default=8, help="rank r of the adapters (default: %(default)s)")
    g.add_argument("--lora_alpha", type=float, default=16.0, help="scale: the update is alpha/r * B A "
                                                                  "(default: %(default)s)")
    g.add_argument("--lora_dropout", type=float, default=0.05, help="dropout on the adapter path "
                                                                    "(default: %(default)s)")
    g.add_argument("--lora_targets", nargs="+", default=list(LORA_TARGETS), metavar="NAME",
                   help="linear layers to adapt, by name, space- or comma-separated (default: "
                        f"{' '.join(LORA_TARGETS)})")
    g.add_argument("--merge", action="store_true", help="also write the merged full model (config.json, "
                                                        "model.safetensors, model_final.pth) to --output_dir")
    p.set_defaults(learning_rate=2e-4, dropout=0.0)


def main(args):
    from ..train.lora import run_lora
    from ..train.setup import resolve_args

    run_lora(resolve_args(args))
