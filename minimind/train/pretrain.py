"""Pretraining and SFT (`python train.py`, `minimind train`; the flags are in minimind/cli/train.py): the shared
trainer with the packed corpus (or conversations, `--stage sft`) and the next-token loss.

    from minimind.train.setup import parse_args
    from minimind.train.pretrain import run
    run(parse_args(["--preset", "tiny", "--max_steps", "300", "--output_dir", "out"]))
"""

import sys
from functools import partial

from .setup import build_model, fit, load_data, model_saver, sampler_for, start


def run(args) -> dict | None:
    """Train as `args` say (see add_training_flags). Returns the final evaluation."""
    from ..data.datasets import collate

    dist_info, tokenizer = start(args)
    model = build_model(args, tokenizer, main=dist_info.main)
    train_set, val_set = load_data(args, tokenizer)
    return fit(args, args.stage, model, train_set, val_set, dist_info,
               collate_fn=partial(collate, pad_id=tokenizer.pad_token_id), save_model=model_saver(tokenizer),
               sample_fn=sampler_for(tokenizer, args.stage))


def main(argv=None):
    """`python train.py`: the same as `minimind train`."""
    from ..cli import main as cli_main

    cli_main(["train", *(sys.argv[1:] if argv is None else argv)], prog="train.py")
