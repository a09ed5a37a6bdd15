"""LoRA fine-tuning (`minimind lora`): the base model (`--pretrained_path`) frozen, low-rank adapters on its linear
layers trained on SFT conversations with the next-token loss. Saves the adapter (and, with --merge, the merged
model). A resumed run rebuilds base + adapters before the saved state is loaded, so the state's names and shapes
match and the optimizer (adapters only) resumes exactly.
"""

import copy
from functools import partial
from pathlib import Path

from .config import TrainConfig
from .metrics import log, seed_line
from .setup import build_model, fit, load_data, model_saver, require_base, sampler_for, start

# --- LoRA ----------------------------------------------------------------------------------------------------------

def lora_saver(tokenizer, merge: bool, base_path: str | None = None):
    """save_model for LoRA runs: the adapter in PEFT's layout (each epoch: adapter_epoch_N.safetensors; at the end:
    adapter_model.safetensors + adapter_config.json + the tokenizer), and with `merge` the merged full model as
    `train` writes it (config.json, model.safetensors, model_final.pth). With `merge` the adapter goes to
    output_dir/adapter/: a folder holding both a model and an adapter_config.json is read by transformers (with
    peft installed) as base + adapter, which would apply the adapter twice."""
    from ..lora import merge_lora, save_adapter
    from ..tokenizer import save_tokenizer

    save_full = model_saver(tokenizer)

    def save(model, out: Path, final: bool, epoch: int | None = None):
        folder = out / "adapter" if merge else out
        if not final:
            path = save_adapter(model, folder, base_path, name=f"adapter_epoch_{epoch}.safetensors")
            log.info(seed_line("adapter_saved", path=path))
            return
        path = save_adapter(model, folder, base_path)
        save_tokenizer(tokenizer, folder)
        log.info(f"LoRA adapter saved to {path} ({path.stat().st_size / 1e6:.2f} MB)")
        if merge:
            save_full(merge_lora(copy.deepcopy(model)), out, final=True)
    return save


def target_names(values) -> list[str]:
    """The layer names of --lora_targets, given as names, comma-separated lists of names, or both."""
    return [t for v in values for t in v.split(",") if t]


def run_lora(config: TrainConfig) -> dict | None:
    """LoRA fine-tuning of config.pretrained_path on SFT (or pretraining) data; see the module docstring."""
    from ..data.datasets import collate
    from ..lora import apply_lora

    require_base(config, "lora")
    config, dist_info, tokenizer = start(config, "lora")
    model = build_model(config, tokenizer)
    apply_lora(model, config.lora_rank, config.lora_alpha, config.lora_dropout, target_names(config.lora_targets))
    train_set, val_set = load_data(config, tokenizer)
    return fit(config, "lora", model, train_set, val_set, dist_info,
               collate_fn=partial(collate, pad_id=tokenizer.pad_token_id),
               save_model=lora_saver(tokenizer, config.merge, str(config.pretrained_path)),
               sample_fn=sampler_for(tokenizer, config.stage))
