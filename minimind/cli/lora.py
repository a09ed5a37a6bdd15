"""`minimind lora`: LoRA fine-tuning. The base model (`--pretrained_path`, required) stays frozen; low-rank adapters
on its linear layers learn from SFT conversations (default: the built-in ones) with the shared trainer.

    minimind lora --pretrained_path sft_out --output_dir lora_out            # saves the adapter (PEFT's layout)
    minimind lora --pretrained_path sft_out --output_dir lora_out --merge    # merged full model; adapter in adapter/

A resumed run rebuilds base + adapters before the saved state is loaded, so the optimizer (adapters only) resumes
exactly.
"""

from ..train.config import command_defaults
from .train import add_training_flags, training_config


def add_arguments(p):
    add_training_flags(p, "lora")
    d = command_defaults("lora")
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora_rank", type=int, help=f"rank r of the adapters (default: {d['lora_rank']})")
    g.add_argument("--lora_alpha", type=float, help=f"scale: the update is alpha/r * B A (default: {d['lora_alpha']})")
    g.add_argument("--lora_dropout", type=float, help=f"dropout on the adapter path (default: {d['lora_dropout']})")
    g.add_argument("--lora_targets", nargs="+", metavar="NAME", help="linear layers to adapt, by name, space- or "
                   f"comma-separated (default: {' '.join(d['lora_targets'])})")
    g.add_argument("--merge", action="store_true", default=None, help="also write the merged full model "
                   "(config.json, model.safetensors, model_final.pth) to --output_dir; the adapter then goes to "
                   "--output_dir/adapter")


def main(args):
    from ..train.lora_finetune import run_lora

    run_lora(training_config(args, "lora"))
