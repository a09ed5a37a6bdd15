"""What every training stage shares around the `Trainer`: the flags resolved (a --preset fills the model flags not
given), the run's start (device, distributed, seed, tokenizer), the model (new, or from --pretrained_path), the
data, the sampler that shows progress, the saved model directories, and `fit`, which runs the trainer.
"""

import argparse
import json
from pathlib import Path

import torch

from ..config import MiniMindConfig
from ..presets import FLAG_TO_FIELD, PRESETS, SEED_MODEL_DEFAULTS
from .trainer import STATE_FILE, Trainer, atomic_save, best_device, init_distributed


def parse_args(argv=None, command: str = "train") -> argparse.Namespace:
    """The resolved flags of `minimind COMMAND ARGV...` (train, lora, dpo, distill), for Python use and tests."""
    from ..cli import command_parser

    return resolve_args(command_parser(command).parse_args(argv))


def resolve_args(args):
    """Fill model flags from --preset (or the seed defaults) where not given; pick the device."""
    base = PRESETS.get(args.preset, {}) if args.preset else {}
    for flag, default in SEED_MODEL_DEFAULTS.items():
        if getattr(args, flag) is None:
            setattr(args, flag, int(base.get(FLAG_TO_FIELD[flag], default)))
    args.device = args.device or best_device()
    if args.resume == "latest":
        args.resume = str(Path(args.output_dir) / STATE_FILE)
    return args


def model_config(args, tokenizer=None) -> MiniMindConfig:
    """The architecture: from the checkpoint's config.json when fine-tuning one, else from the flags."""
    pretrained = Path(args.pretrained_path) if args.pretrained_path else None
    cfg_file = None
    if pretrained is not None:
        cfg_file = pretrained / "config.json" if pretrained.is_dir() else pretrained.parent / "config.json"
    if cfg_file is not None and cfg_file.is_file():
        from ..checkpoint import load_config
        config = load_config(str(cfg_file))
        config.dropout = args.dropout
        return config
    fields = dict(PRESETS.get(args.preset, {})) if args.preset else {}
    fields.update(hidden_size=args.hidden_size, num_hidden_layers=args.num_layers, num_attention_heads=args.num_heads,
                  num_key_value_heads=args.num_kv_heads, vocab_size=args.vocab_size, use_moe=bool(args.use_moe),
                  dropout=args.dropout)
    fields.setdefault("max_position_embeddings", max(args.max_seq_len, 2048))
    fields["max_position_embeddings"] = max(fields["max_position_embeddings"], args.max_seq_len)
    return MiniMindConfig(**fields)


def settings(args) -> dict:
    """The run's flags as plain values (not the CLI's dispatch function)."""
    return {k: v for k, v in vars(args).items() if not callable(v)}


def print_banner(args):
    print("=" * 50)
    print("MiniMind 训练配置:")
    print("=" * 50)
    for key, value in settings(args).items():
        print(f"{key}: {value}")
    print("=" * 50)


def load_data(args, tokenizer):
    from ..data.datasets import PretrainDataset, SFTDataset
    cls = {"pretrain": PretrainDataset, "sft": SFTDataset}[args.stage]
    train = cls(args.data, tokenizer, args.max_seq_len, split="train", skip_bad_records=args.skip_bad_records)
    val = cls(args.data, tokenizer, args.max_seq_len, split="val", skip_bad_records=args.skip_bad_records)
    return train, val


def sampler_for(tokenizer, stage: str, max_new_tokens: int = 48):
    """A function model -> text that continues a fixed prompt (chat-formatted for SFT)."""
    from ..infer.generate import sample

    if stage == "sft":
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hello, how are you?"}], tokenize=False,
                                               add_generation_prompt=True)
    else:
        prompt = tokenizer.bos_token + "In the beginning"

    def fn(model):
        device = next(model.parameters()).device
        ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)], device=device)
        room = min(max_new_tokens, model.config.max_position_embeddings - ids.shape[1])  # stay inside the context
        if room <= 0:
            return ""
        out = sample(model, ids, room, temperature=0.8, top_k=50, eos_token_id=tokenizer.eos_token_id)
        return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return fn


def model_saver(tokenizer):
    """save_model(model, out, final, epoch): the seed's .pth files, plus a Hugging Face directory at the end."""
    from ..tokenizer import save_tokenizer

    def save(model, out: Path, final: bool, epoch: int | None = None):
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        if not final:
            path = out / f"model_epoch_{epoch}.pth"
            atomic_save(state, path)
            print(f"模型已保存到: {path}")
            return
        path = out / "model_final.pth"
        atomic_save(state, path)
        model.save_pretrained(out)
        save_tokenizer(tokenizer, out)
        print(f"训练完成! 最终模型已保存到: {path}")
    return save


def start(args):
    """Join torchrun's process group if any, print the banner, seed, load the tokenizer: (dist_info, tokenizer)."""
    from ..tokenizer import load_tokenizer

    dist_info = init_distributed(args.device)
    if dist_info.world > 1 and args.device.startswith("cuda"):
        args.device = f"cuda:{dist_info.local_rank}"
        torch.cuda.set_device(args.device)
    if dist_info.main:
        print_banner(args)
        print(f"使用设备: {args.device}" + (f" x {dist_info.world} processes" if dist_info.world > 1 else ""))
    torch.manual_seed(args.seed)
    return dist_info, load_tokenizer(args.tokenizer)


def build_model(args, tokenizer, config=None, main=True):
    """A MiniMind model for `args` (`config`, else the flags, or --pretrained_path's config.json), with the
    --pretrained_path weights when given."""
    from ..checkpoint import load_weights
    from ..model import MiniMindForCausalLM
    from ..tokenizer import check_tokenizer_fits

    config = config or model_config(args, tokenizer)
    check_tokenizer_fits(tokenizer, config)
    if main:
        print("初始化模型...")
    model = MiniMindForCausalLM(config)
    if args.pretrained_path:
        load_weights(model, args.pretrained_path)
        if main:
            print(f"已加载预训练权重: {args.pretrained_path}")
    return model


def fit(args, stage, model, train_set, val_set, dist_info, **trainer_kw) -> dict | None:
    """Write args.json, report the sizes, run the shared Trainer, leave the process group; returns the final
    evaluation. Every stage (pretrain, SFT, LoRA, DPO, distillation) ends here."""
    if dist_info.main:
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = "" if trainable == total else f", trainable {trainable / 1e6:.3f}M ({100 * trainable / total:.2f}%)"
        print(f"模型参数: {total / 1e6:.2f}M{frozen}; 训练样本: {len(train_set)}; 验证样本: {len(val_set)}")
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "args.json").write_text(json.dumps(settings(args), indent=2, ensure_ascii=False), encoding="utf-8")
    trainer = Trainer(model, args, train_set, val_set, dist_info=dist_info, **trainer_kw)
    if dist_info.main:
        print(f"开始训练 {args.epochs} 个epoch... ({stage}: {trainer.total_steps} steps of {trainer.global_batch} "
              f"x {args.max_seq_len} tokens, {trainer.dtype})".replace("torch.", ""))
    result = trainer.fit()
    if dist_info.main and result:
        hidden = {"eval_ppl"} if stage in ("dpo", "distill") else set()  # their loss is not a language-model loss
        if result.get("eval_aux", 1) == 0:  # a dense model: no aux loss, and its ce is the loss
            hidden |= {"eval_aux", "eval_ce"}
        shown = [f"perplexity {v:.2f}" if k == "eval_ppl" else f"{k.removeprefix('eval_')} {v:.4f}"
                 for k, v in result.items() if k not in hidden]
        print(f"Held-out ({stage}): " + ", ".join(shown))
    if dist_info.world > 1:
        torch.distributed.destroy_process_group()
    return result


# --- shared set-up -------------------------------------------------------------------------------------------------

def _require_base(args, stage: str) -> None:
    if not args.pretrained_path:
        raise ValueError(f"--pretrained_path is required for {stage}: the base model to fine-tune (a training output "
                         "directory, a model directory, or a .pth/.safetensors file), e.g. the output of "
                         "`minimind train --stage sft`")
