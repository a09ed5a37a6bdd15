"""`minimind lora`: LoRA fine-tuning. The base model (`--pretrained_path`, required) stays frozen; low-rank adapters
on its linear layers learn from SFT conversations (default: the built-in ones) with the shared trainer.

    minimind lora --pretrained_path sft_out --output_dir lora_out            # saves the adapter (PEFT's layout)
    minimind lora --pretrained_path sft_out --output_dir lora_out --merge    # merged full model; adapter in adapter/

A resumed run rebuilds base + adapters before the saved state is loaded, so the optimizer (adapters only) resumes
exactly.
"""

from .train import add_training_flags, training_config


def add_arguments(p):
    add_training_flags(p, "lora")  # its flags are TrainConfig's fields (minimind.train.config)


def main(args):
    from ..train.lora_finetune import run_lora

    run_lora(training_config(args, "lora"))
