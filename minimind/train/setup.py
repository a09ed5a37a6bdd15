"""What every training stage shares around the `Trainer`: the settings resolved (a preset fills the model fields not
given), the run's start (logging, device, distributed, seed, tokenizer), the model (new, or from pretrained_path),
the data, the sampler that shows progress, the saved model directories, and `fit`, which runs the trainer.
"""

from dataclasses import replace
from pathlib import Path

import torch

from ..checkpoint import best_device
from ..config import MiniMindConfig
from ..io import atomic_write
from ..presets import DEFAULT_MODEL, FLAG_TO_FIELD, PRESETS
from .resume import STATE_FILE
from .config import TrainConfig
from .metrics import banner, log, seed_line, setup_logging
from .parallel import init_distributed
from .trainer import Trainer


def resolve(config: TrainConfig) -> TrainConfig:
    """A copy with the model fields not given filled from the preset (or DEFAULT_MODEL), the device picked, and
    resume="latest" made the state file in output_dir. Resolving a resolved config changes nothing."""
    base = PRESETS.get(config.preset, {}) if config.preset else {}
    filled = {flag: int(base.get(FLAG_TO_FIELD[flag], default)) for flag, default in DEFAULT_MODEL.items()
              if getattr(config, flag) is None}
    resume = str(Path(config.output_dir) / STATE_FILE) if config.resume == "latest" else config.resume
    return replace(config, **filled, device=config.device or best_device(), resume=resume)


def model_config(config: TrainConfig, tokenizer=None) -> MiniMindConfig:
    """The architecture: from the checkpoint's config.json when fine-tuning one, else from the settings."""
    pretrained = Path(config.pretrained_path) if config.pretrained_path else None
    cfg_file = None
    if pretrained is not None:
        cfg_file = pretrained / "config.json" if pretrained.is_dir() else pretrained.parent / "config.json"
    if cfg_file is not None and cfg_file.is_file():
        from ..checkpoint import load_config
        model = load_config(str(cfg_file))
        model.dropout = config.dropout
        return model
    fields = dict(PRESETS.get(config.preset, {})) if config.preset else {}
    fields.update(hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
                  num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
                  vocab_size=config.vocab_size, use_moe=bool(config.use_moe), dropout=config.dropout)
    fields.setdefault("max_position_embeddings", max(config.max_seq_len, 2048))
    fields["max_position_embeddings"] = max(fields["max_position_embeddings"], config.max_seq_len)
    return MiniMindConfig(**fields)


def load_data(config: TrainConfig, tokenizer):
    from ..data.datasets import PretrainDataset, SFTDataset
    from ..data.messages import Augment

    cls = {"pretrain": PretrainDataset, "sft": SFTDataset}[config.stage]
    kw = {"skip_bad_records": config.skip_bad_records}
    augment = Augment(config.add_system_ratio, config.empty_think_ratio, seed=config.seed)
    if config.stage == "sft":
        kw["augment"] = augment
    elif augment != Augment(seed=config.seed):
        raise ValueError("--add_system_ratio and --empty_think_ratio change conversations: they need --stage sft")
    return (cls(config.data, tokenizer, config.max_seq_len, split="train", **kw),
            cls(config.data, tokenizer, config.max_seq_len, split="val", **kw))


def sampler_for(tokenizer, stage: str, max_new_tokens: int = 48):
    """A function model -> text that continues a fixed prompt (chat-formatted for SFT)."""
    from ..data.messages import prompt_text
    from ..infer.generate import sample

    if stage == "sft":
        prompt = prompt_text(tokenizer, [{"role": "user", "content": "Hello, how are you?"}])
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
    """save_model(model, out, final, epoch): the seed's .pth files, plus a Hugging Face directory at the end (each
    written under a temporary name and renamed into place: a full disk or a kill leaves no half-written file)."""
    from ..tokenizer import save_tokenizer

    def save(model, out: Path, final: bool, epoch: int | None = None):
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        if not final:
            path = out / f"model_epoch_{epoch}.pth"
            with atomic_write(path) as tmp:
                torch.save(state, tmp)
            log.info(seed_line("epoch_saved", path=path))
            return
        with atomic_write(out, directory=True) as tmp:  # the final files appear once all of them are written
            torch.save(state, tmp / "model_final.pth")
            model.save_pretrained(tmp)
            save_tokenizer(tokenizer, tmp)
        log.info(seed_line("final_saved", path=out / "model_final.pth"))
    return save


def tokenizer_path(config: TrainConfig) -> str | None:
    """--tokenizer, else the tokenizer saved with the weights the run starts from (--pretrained_path, or the
    distillation teacher), else None (the shipped one)."""
    if config.tokenizer:
        return config.tokenizer
    for source in (config.pretrained_path, config.teacher):
        if source:
            folder = Path(source) if Path(source).is_dir() else Path(source).parent
            if (folder / "tokenizer.json").is_file():
                return str(folder)
    return None


def start(config: TrainConfig, command: str = "train"):
    """Resolve the settings (`resolve`), set up logging, join torchrun's process group if any (each rank on its own
    GPU), print the banner, seed, load the tokenizer: (config, dist_info, tokenizer)."""
    from ..tokenizer import load_tokenizer

    config = resolve(config)
    dist_info = init_distributed(config.device)
    setup_logging(dist_info.main)
    if dist_info.world > 1 and config.device.startswith("cuda"):
        config = replace(config, device=f"cuda:{dist_info.local_rank}")
        torch.cuda.set_device(config.device)
    log.info(banner(config.to_dict(command)))
    log.info(seed_line("device", device=config.device) + (f" x {dist_info.world} processes"
                                                          if dist_info.world > 1 else ""))
    torch.manual_seed(config.seed)
    return config, dist_info, load_tokenizer(tokenizer_path(config))


def build_model(config: TrainConfig, tokenizer, model_cfg: MiniMindConfig | None = None):
    """A MiniMind model for `config` (`model_cfg`, else the settings, or pretrained_path's config.json), with the
    pretrained_path weights when given."""
    from ..checkpoint import load_weights
    from ..model import MiniMindForCausalLM
    from ..tokenizer import check_tokenizer_fits

    model_cfg = model_cfg or model_config(config, tokenizer)
    check_tokenizer_fits(tokenizer, model_cfg)
    log.info(seed_line("init"))
    model = MiniMindForCausalLM(model_cfg)
    if config.pretrained_path:
        load_weights(model, config.pretrained_path)
        log.info(seed_line("loaded", path=config.pretrained_path))
    return model


PERPLEXITY_NAMES = {  # what exp(held-out loss) is, by the data it was measured on (`minimind eval`'s differs)
    "pretrain": "packed held-out perplexity",  # sequences of max_seq_len tokens cut from the concatenated documents
    "sft": "held-out perplexity on assistant tokens",  # one conversation per sequence, loss on the replies only
}


def fit(config: TrainConfig, command: str, model, train_set, val_set, dist_info, **trainer_kw) -> dict | None:
    """Write args.json (the settings `minimind COMMAND --config` reads back), report the sizes, run the shared
    Trainer, leave the process group; returns the final evaluation. Every stage (pretrain, SFT, LoRA, DPO,
    distillation) ends here."""
    stage = config.stage if command == "train" else command
    if dist_info.main:
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = "" if trainable == total else f", trainable {trainable / 1e6:.3f}M ({100 * trainable / total:.2f}%)"
        log.info(seed_line("sizes", params=f"{total / 1e6:.2f}M{frozen}", train=len(train_set), val=len(val_set)))
        import json
        with atomic_write(Path(config.output_dir) / "args.json") as tmp:
            tmp.write_text(json.dumps(config.to_dict(command), indent=2, ensure_ascii=False), encoding="utf-8")
    ppl_name = PERPLEXITY_NAMES.get(config.stage) if command in ("train", "lora") else None  # DPO, KD: not an LM loss
    trainer = Trainer(model, config, train_set, val_set, dist_info=dist_info, perplexity_name=ppl_name, **trainer_kw)
    detail = (f"({stage}: {trainer.total_steps} steps of {trainer.global_batch} x {config.max_seq_len} tokens, "
              f"{trainer.dtype})").replace("torch.", "")
    log.info(seed_line("start", epochs=config.epochs, detail=detail))
    result = trainer.fit()
    if dist_info.main and result:
        hidden = set() if ppl_name else {"eval_ppl"}
        if result.get("eval_aux", 1) == 0:  # a dense model: no aux loss, and its ce is the loss
            hidden |= {"eval_aux", "eval_ce"}
        shown = [f"{ppl_name} {v:.2f}" if k == "eval_ppl" else f"{k.removeprefix('eval_')} {v:.4f}"
                 for k, v in result.items() if k not in hidden]
        log.info(f"Held-out ({stage}): " + ", ".join(shown))
    if dist_info.world > 1:
        torch.distributed.destroy_process_group()
    return result


def require_base(config: TrainConfig, command: str) -> None:
    if not config.pretrained_path:
        raise ValueError(f"--pretrained_path is required for {command}: the base model to fine-tune (a training "
                         "output directory, a model directory, or a .pth/.safetensors file), e.g. the output of "
                         "`minimind train --stage sft`")
