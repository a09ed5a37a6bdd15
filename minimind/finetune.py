"""`minimind lora` / `minimind dpo` / `minimind distill`: the fine-tuning stages, each the shared `Trainer` with its
own model, data and loss (no training loop of their own: resume, AMP, accumulation, DDP, logging come with it).

    minimind lora --pretrained_path sft_out --output_dir lora_out            # SFT conversations through adapters
    minimind lora --pretrained_path sft_out --output_dir lora_out --merge    # ... plus a merged full model
    minimind dpo --pretrained_path sft_out --output_dir dpo_out --beta 0.1   # the built-in preference pairs
    minimind distill --teacher sft_out --preset tiny --output_dir student    # a big model teaches a small one

| stage   | model                               | data (default)    | loss                        | saves            |
|---------|-------------------------------------|-------------------|-----------------------------|------------------|
| lora    | base (frozen) + LoRA adapters       | SFT conversations | next-token CE (`lm_loss`)   | adapter (+merged)|
| dpo     | policy + frozen reference copy      | preference pairs  | sigmoid DPO (`minimind.dpo`)| full model       |
| distill | student (preset / config / weights) | SFT conversations | alpha CE + (1-alpha) T^2 KL | full model       |

`--pretrained_path` is the base model of lora and dpo (required). A resumed LoRA run rebuilds base + adapters
before the saved state is loaded, so the state's names and shapes match and the optimizer (adapters only) resumes
exactly; a resumed DPO run rebuilds its reference from `--pretrained_path`.
"""

import argparse
import copy
from functools import partial
from pathlib import Path

import torch

from .train import build_model, fit, load_data, model_saver, resolve_args, sampler_for, start
from .trainer import resolve_dtype


def parse_args(stage: str, argv=None) -> argparse.Namespace:
    """The resolved flags of `minimind STAGE ...` (lora, dpo, distill; for Python use and tests)."""
    from .cli import command_parser

    return resolve_args(command_parser(stage).parse_args(argv))


# --- shared set-up -------------------------------------------------------------------------------------------------

def _require_base(args, stage: str) -> None:
    if not args.pretrained_path:
        raise ValueError(f"--pretrained_path is required for {stage}: the base model to fine-tune (a training output "
                         "directory, a model directory, or a .pth/.safetensors file), e.g. the output of "
                         "`minimind train --stage sft`")


# --- LoRA ----------------------------------------------------------------------------------------------------------

def lora_saver(tokenizer, merge: bool, base_path: str | None = None):
    """save_model for LoRA runs: the adapter (each epoch: adapter_epoch_N.safetensors; at the end:
    adapter_model.safetensors + adapter_config.json + the tokenizer), and with `merge` the merged full model as
    `train` writes it (config.json, model.safetensors, model_final.pth)."""
    from .lora import merge_lora, save_adapter
    from .tokenizer import save_tokenizer

    save_full = model_saver(tokenizer)

    def save(model, out: Path, final: bool, epoch: int | None = None):
        if not final:
            path = save_adapter(model, out, base_path, name=f"adapter_epoch_{epoch}.safetensors")
            print(f"适配器已保存到: {path}")
            return
        path = save_adapter(model, out, base_path)
        save_tokenizer(tokenizer, out)
        print(f"LoRA adapter saved to {path} ({path.stat().st_size / 1e6:.2f} MB)")
        if merge:
            save_full(merge_lora(copy.deepcopy(model)), out, final=True)
    return save


def _targets(values) -> list[str]:
    return [t for v in values for t in v.split(",") if t]


def run_lora(args) -> dict | None:
    """LoRA fine-tuning of --pretrained_path on SFT (or pretraining) data; see the module docstring."""
    from .data import collate
    from .lora import apply_lora

    _require_base(args, "lora")
    dist_info, tokenizer = start(args)
    model = build_model(args, tokenizer, main=dist_info.main)
    apply_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout, _targets(args.lora_targets))
    train_set, val_set = load_data(args, tokenizer)
    return fit(args, "lora", model, train_set, val_set, dist_info,
               collate_fn=partial(collate, pad_id=tokenizer.pad_token_id),
               save_model=lora_saver(tokenizer, args.merge, str(args.pretrained_path)),
               sample_fn=sampler_for(tokenizer, args.stage))


# --- DPO -----------------------------------------------------------------------------------------------------------

def run_dpo(args) -> dict | None:
    """DPO of --pretrained_path on preference pairs (default: the built-in ones) against a frozen copy of itself."""
    from .data import DPODataset, collate
    from .dpo import dpo_loss_fn, frozen_reference

    _require_base(args, "dpo")
    dist_info, tokenizer = start(args)
    model = build_model(args, tokenizer, main=dist_info.main)
    reference = frozen_reference(model).to(args.device)  # the starting weights; a resumed run rebuilds the same
    kw = {"tokenizer": tokenizer, "seq_len": args.max_seq_len, "skip_bad_records": args.skip_bad_records}
    train_set, val_set = DPODataset(args.data, split="train", **kw), DPODataset(args.data, split="val", **kw)
    return fit(args, "dpo", model, train_set, val_set, dist_info, loss_fn=dpo_loss_fn(reference, args.beta),
               collate_fn=partial(collate, pad_id=tokenizer.pad_token_id), save_model=model_saver(tokenizer),
               sample_fn=sampler_for(tokenizer, "sft"))


# --- distillation --------------------------------------------------------------------------------------------------

def run_distill(args) -> dict | None:
    """Distil --teacher into a student built from --preset / size flags / --student_config (or --pretrained_path)."""
    from .checkpoint import load_config
    from .data import collate
    from .distill import distill_loss_fn, load_teacher

    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be between 0 and 1, got {args.alpha}")
    if args.temperature <= 0:
        raise ValueError(f"--temperature must be positive, got {args.temperature}")
    dist_info, tokenizer = start(args)
    config = None
    if args.student_config and not args.pretrained_path:
        config = load_config(args.student_config)
        config.dropout = args.dropout
    student = build_model(args, tokenizer, config, main=dist_info.main)
    device = torch.device(args.device)
    teacher = load_teacher(args.teacher, device, resolve_dtype(args.dtype, device), tokenizer)
    if teacher.config.vocab_size != student.config.vocab_size:
        raise ValueError(f"the teacher ({args.teacher}) has vocab_size {teacher.config.vocab_size} but the student "
                         f"{student.config.vocab_size}: distillation needs both on the same tokenizer; give the "
                         f"student --vocab_size {teacher.config.vocab_size}")
    if dist_info.main:
        print(f"Teacher {args.teacher}: {sum(p.numel() for p in teacher.parameters()) / 1e6:.2f}M parameters, "
              f"{next(teacher.parameters()).dtype}".replace("torch.", ""))
    train_set, val_set = load_data(args, tokenizer)
    return fit(args, "distill", student, train_set, val_set, dist_info,
               loss_fn=distill_loss_fn(teacher, args.alpha, args.temperature),
               collate_fn=partial(collate, pad_id=tokenizer.pad_token_id), save_model=model_saver(tokenizer),
               sample_fn=sampler_for(tokenizer, args.stage))
