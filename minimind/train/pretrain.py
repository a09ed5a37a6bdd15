"""Pretraining and SFT (`python train.py`, `minimind train`; the flags are in minimind/cli/train.py): the shared
trainer with the packed corpus (or conversations, `--stage sft`) and the next-token loss.

    from minimind.train.config import TrainConfig
    from minimind.train.pretrain import run
    run(TrainConfig(preset="tiny", max_steps=300, output_dir="out"))  # or run(cli.train.parse_args([...flags]))
"""

from functools import partial

from .config import TrainConfig
from .setup import build_model, fit, load_data, model_saver, sampler_for, start


def run(config: TrainConfig) -> dict | None:
    """Train as `config` says. Returns the final evaluation."""
    from ..data.datasets import collate

    config, dist_info, tokenizer = start(config, "train")
    model = build_model(config, tokenizer)
    train_set, val_set = load_data(config, tokenizer)
    return fit(config, "train", model, train_set, val_set, dist_info,
               collate_fn=partial(collate, pad_id=tokenizer.pad_token_id), save_model=model_saver(tokenizer),
               sample_fn=sampler_for(tokenizer, config.stage))
