"""Knowledge distillation (Hinton et al., 2015): a student learns from the labels and from a teacher's distribution.

At every position t that has a label (labels != -100, shifted as the model's own loss), with student logits s_t,
teacher logits z_t, temperature T and weight alpha:

    p_T = softmax(z_t / T)            the teacher, softened
    q_T = softmax(s_t / T)            the student, softened
    KL  = sum_v p_T(v) * (log p_T(v) - log q_T(v))                          KL(teacher_T || student_T)
    loss = alpha * CE(s_t, label) + (1 - alpha) * T^2 * KL                  mean over the labelled positions

T^2 keeps the soft term's gradients the same size whatever T (they scale as 1/T^2). The teacher is any MODEL (a
training output directory, a model directory, or a .pth/.safetensors file with config.json beside it) that uses
the student's tokenizer; it runs frozen, in eval mode, without gradients, with its weights cast to the run's
training dtype (bf16 halves its memory) and under the same autocast as the student.

    minimind distill --teacher sft_out --preset tiny --output_dir student --temperature 2.0 --alpha 0.5
"""

from functools import partial

import torch
import torch.nn.functional as F

from ..checkpoint import resolve_dtype
from .config import TrainConfig
from .metrics import log
from .setup import build_model, fit, load_data, model_saver, sampler_for, start


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                 alpha: float = 0.5, temperature: float = 2.0):
    """logits (B, T, V) each, labels (B, T) -> (loss, ce, kl), each a 0-dim tensor; see the module docstring."""
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # (B, T): position t predicts labels[t + 1]
    keep = targets != -100
    s = student_logits[keep].float()  # (N, V), the N labelled positions
    t = teacher_logits[keep].float()  # (N, V)
    ce = F.cross_entropy(s, targets[keep])
    log_q = F.log_softmax(s / temperature, dim=-1)
    log_p = F.log_softmax(t / temperature, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()  # KL(p_T || q_T) per position, averaged
    loss = alpha * ce + (1 - alpha) * temperature ** 2 * kl
    return loss, ce, kl


def distill_loss_fn(teacher: torch.nn.Module, alpha: float = 0.5, temperature: float = 2.0):
    """loss_fn(model, batch) -> (loss, {"ce", "kl"}) for the Trainer; the student's MoE balancing loss is added."""

    def loss_fn(model, batch):
        ids, mask, labels = batch["input_ids"], batch.get("attention_mask"), batch["labels"]
        out = model(ids, attention_mask=mask)
        with torch.no_grad():
            teacher_logits = teacher(ids, attention_mask=mask).logits
        loss, ce, kl = distill_loss(out.logits, teacher_logits, labels, alpha, temperature)
        return loss + out.aux_loss, {"ce": ce.detach(), "kl": kl.detach()}

    return loss_fn


def load_teacher(spec: str, device="cpu", dtype: torch.dtype = torch.float32, tokenizer=None) -> torch.nn.Module:
    """The teacher model from MODEL (output dir, model dir, .pth/.safetensors with config.json beside it), through
    `minimind.checkpoint.load_model`: frozen, eval mode, on `device`, weights in `dtype`. Given the run's `tokenizer`,
    a teacher saved with a different one is refused (its token ids would mean other things)."""
    from ..checkpoint import load_model
    from ..tokenizer import tokenizer_hash

    teacher, teacher_tokenizer = load_model(spec, device=device, dtype=dtype)
    if tokenizer is not None and tokenizer_hash(teacher_tokenizer) != tokenizer_hash(tokenizer):
        raise ValueError(f"{spec}: the teacher was trained with another tokenizer than the student's; distillation "
                         "compares their predictions token by token, so both must use the same one (--tokenizer)")
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


# --- distillation --------------------------------------------------------------------------------------------------

def run_distill(config: TrainConfig) -> dict | None:
    """Distil config.teacher into a student built from the preset / size fields / student_config (or
    pretrained_path)."""
    from ..checkpoint import load_config
    from ..data.datasets import collate

    if not config.teacher:
        raise ValueError("--teacher is required for distill: the teacher MODEL (a training output directory, a model "
                         "directory, or a .pth/.safetensors file with config.json beside it)")
    if not 0.0 <= config.alpha <= 1.0:
        raise ValueError(f"--alpha must be between 0 and 1, got {config.alpha}")
    if config.temperature <= 0:
        raise ValueError(f"--temperature must be positive, got {config.temperature}")
    config, dist_info, tokenizer = start(config, "distill")
    student_cfg = None
    if config.student_config and not config.pretrained_path:
        student_cfg = load_config(config.student_config)
        student_cfg.dropout = config.dropout
    student = build_model(config, tokenizer, student_cfg)
    device = torch.device(config.device)
    teacher = load_teacher(config.teacher, device, resolve_dtype(config.dtype, device, cpu_bf16=True), tokenizer)
    if teacher.config.vocab_size != student.config.vocab_size:
        raise ValueError(f"the teacher ({config.teacher}) has vocab_size {teacher.config.vocab_size} but the student "
                         f"{student.config.vocab_size}: distillation needs both on the same tokenizer; give the "
                         f"student --vocab_size {teacher.config.vocab_size}")
    log.info(f"Teacher {config.teacher}: {sum(p.numel() for p in teacher.parameters()) / 1e6:.2f}M parameters, "
             f"{next(teacher.parameters()).dtype}".replace("torch.", ""))
    train_set, val_set = load_data(config, tokenizer)
    return fit(config, "distill", student, train_set, val_set, dist_info,
               loss_fn=distill_loss_fn(teacher, config.alpha, config.temperature),
               collate_fn=partial(collate, pad_id=tokenizer.pad_token_id), save_model=model_saver(tokenizer),
               sample_fn=sampler_for(tokenizer, config.stage))
