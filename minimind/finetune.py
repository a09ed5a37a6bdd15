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
import re
from functools import partial
from pathlib import Path

import torch

from .train import add_training_flags, build_model, fit, load_data, model_saver, resolve_args, sampler_for, start
from .trainer import resolve_dtype

# --- flags ---------------------------------------------------------------------------------------------------------

def _set_default(p: argparse.ArgumentParser, dest: str, value) -> None:
    """Change a shared flag's default for one stage, and the "(default: ...)" its help shows."""
    for action in p._actions:
        if action.dest == dest:
            action.default = value
            if action.help:
                action.help = re.sub(r"\(default: [^)]*\)", f"(default: {value})", action.help)


def add_lora_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from .lora import DEFAULT_TARGETS

    add_training_flags(p, ("sft", "pretrain"))
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora_rank", type=int, default=8, help="rank r of the adapters (default: 8)")
    g.add_argument("--lora_alpha", type=float, default=16.0, help="scale: the update is alpha/r * B A (default: 16)")
    g.add_argument("--lora_dropout", type=float, default=0.05, help="dropout on the adapter path (default: 0.05)")
    g.add_argument("--lora_targets", nargs="+", default=list(DEFAULT_TARGETS), metavar="NAME",
                   help="linear layers to adapt, by name, space- or comma-separated (default: "
                        f"{' '.join(DEFAULT_TARGETS)})")
    g.add_argument("--merge", action="store_true", help="also write the merged full model (config.json, "
                                                        "model.safetensors, model_final.pth) to --output_dir")
    _set_default(p, "learning_rate", 2e-4)
    _set_default(p, "dropout", 0.0)
    return p


def add_dpo_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_training_flags(p, ("dpo",))
    g = p.add_argument_group("DPO")
    g.add_argument("--beta", type=float, default=0.1, help="strength of the pull towards the reference: reward = "
                                                           "beta * (log pi - log pi_ref) (default: 0.1)")
    _set_default(p, "learning_rate", 5e-6)
    _set_default(p, "dropout", 0.0)  # dropout would make the policy differ from the reference by noise alone
    return p


def add_distill_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from .config import PRESETS

    add_training_flags(p, ("sft", "pretrain"))
    g = p.add_argument_group("distillation")
    g.add_argument("--teacher", required=True, metavar="MODEL", help="the teacher: a training output directory, a "
                   "model directory, or a .pth/.safetensors file with config.json beside it (same tokenizer)")
    g.add_argument("--student_preset", dest="preset", choices=sorted(PRESETS), default=None,
                   help="the student's size (same as --preset; or give --hidden_size etc., or --student_config)")
    g.add_argument("--student_config", default=None, metavar="CONFIG",
                   help="the student's config.json or model directory (instead of a preset or size flags)")
    g.add_argument("--temperature", type=float, default=2.0, help="softmax temperature T (default: 2.0)")
    g.add_argument("--alpha", type=float, default=0.5, help="weight of the label CE; 1 - alpha goes to the T^2 KL "
                                                            "term (default: 0.5)")
    return p


STAGE_FLAGS = {"lora": add_lora_flags, "dpo": add_dpo_flags, "distill": add_distill_flags}


def parse_args(stage: str, argv=None) -> argparse.Namespace:
    """The resolved flags of `minimind STAGE ...` (for Python use and tests)."""
    p = argparse.ArgumentParser(prog=f"minimind {stage}")
    return resolve_args(STAGE_FLAGS[stage](p).parse_args(argv))


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
