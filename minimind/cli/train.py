"""`python train.py` / `minimind train`: pretrain or fine-tune (SFT) a MiniMind model.

Takes every flag of the seed's train.py with its default, plus the ones a real run needs. With no
arguments it pretrains the seed's model on the built-in corpus. `--config FILE` (YAML or JSON, e.g. the
args.json a run wrote) gives settings from a file; flags given on the command line override it.

    python train.py                                                    # seed defaults, built-in corpus
    python train.py --preset tiny --max_steps 300 --output_dir out     # a quick CPU run
    python train.py --stage sft --pretrained_path out --output_dir sft # fine-tune on conversations
    python train.py --config out/args.json --output_dir again          # out's run again, elsewhere
    torchrun --nproc_per_node 4 train.py --batch_size 16               # DDP on 4 GPUs
"""

import argparse

from ..presets import PRESETS
from ..presets import SEED_MODEL_DEFAULTS as SEED
from ..train.config import DTYPE_CHOICES, OPTIMIZER_CHOICES, STAGES, build_config, command_defaults


def add_training_flags(p: argparse.ArgumentParser, command: str = "train"):
    """The flags every training command shares (train, lora, dpo, distill), with `command`'s defaults in their help.

    Every flag defaults to None, meaning "not given": the defaults live in `minimind.train.config.TrainConfig`, and
    a --config file's settings come between the two (see `training_config`)."""
    d = command_defaults(command)
    p.add_argument("--config", metavar="FILE", help="settings from a YAML or JSON file (e.g. a run's args.json); "
                                                    "flags given here override it")

    g = p.add_argument_group("model (seed flags; a --preset fills those not given)")
    g.add_argument("--preset", choices=sorted(PRESETS), help="named model size")
    g.add_argument("--hidden_size", type=int, help=f"hidden dimension (default: {SEED['hidden_size']})")
    g.add_argument("--num_layers", type=int, help=f"number of layers (default: {SEED['num_layers']})")
    g.add_argument("--num_heads", type=int, help=f"attention heads (default: {SEED['num_heads']})")
    g.add_argument("--num_kv_heads", type=int, help=f"key/value heads, GQA (default: {SEED['num_kv_heads']})")
    g.add_argument("--vocab_size", type=int, help=f"vocabulary size (default: {SEED['vocab_size']})")
    g.add_argument("--max_seq_len", type=int, help=f"training sequence length (default: {d['max_seq_len']})")
    g.add_argument("--dropout", type=float, help=f"dropout rate (default: {d['dropout']})")
    g.add_argument("--use_moe", type=int, choices=(0, 1), help=f"mixture of experts (default: {SEED['use_moe']})")

    g = p.add_argument_group("training (seed flags)")
    g.add_argument("--epochs", type=int, help=f"training epochs (default: {d['epochs']})")
    g.add_argument("--batch_size", type=int, help=f"micro-batch size per process (default: {d['batch_size']})")
    g.add_argument("--learning_rate", type=float, help=f"peak learning rate (default: {d['learning_rate']})")
    g.add_argument("--weight_decay", type=float, help=f"AdamW weight decay (default: {d['weight_decay']})")
    g.add_argument("--grad_clip", type=float, help=f"gradient clipping norm, 0 = off (default: {d['grad_clip']})")

    g = p.add_argument_group("other (seed flags)")
    g.add_argument("--device", help="cuda, cuda:N, mps or cpu (default: the best available)")
    g.add_argument("--output_dir", help=f"where models and state go (default: {d['output_dir']})")
    g.add_argument("--pretrained_path", help="start from these weights: .pth, .safetensors or a model directory "
                                             "(default: none)")
    g.add_argument("--log_interval", type=int, help=f"log every N steps (default: {d['log_interval']})")
    g.add_argument("--save_interval", type=int, help="save model_epoch_N.pth every N epochs "
                                                     f"(default: {d['save_interval']})")

    g = p.add_argument_group("data")
    g.add_argument("--stage", choices=STAGES[command], help=f"what to train on (default: {d['stage']})")
    g.add_argument("--data", help="file, folder, glob or prepared shards (default: built-in corpus)")
    g.add_argument("--tokenizer", help="tokenizer directory (default: the shipped 6400-token one)")
    g.add_argument("--skip_bad_records", action="store_true", default=None, help="warn about and skip malformed "
                                                                                 "records")
    g.add_argument("--num_workers", type=int, help=f"DataLoader worker processes (default: {d['num_workers']})")

    g = p.add_argument_group("optimisation")
    g.add_argument("--accumulation_steps", type=int, help="micro-batches per optimizer step "
                                                          f"(default: {d['accumulation_steps']})")
    g.add_argument("--warmup_ratio", type=float, help="warmup as a fraction of all steps "
                                                      f"(default: {d['warmup_ratio']})")
    g.add_argument("--warmup_steps", type=int, help="warmup steps (overrides --warmup_ratio)")
    g.add_argument("--min_lr_ratio", type=float, help="cosine decays to learning_rate * this "
                                                      f"(default: {d['min_lr_ratio']})")
    g.add_argument("--optimizer", choices=OPTIMIZER_CHOICES, help="adamw, or muon: Muon for the hidden weight "
                   "matrices and AdamW for embeddings, norms and biases, one learning rate for both "
                   f"(default: {d['optimizer']})")
    g.add_argument("--dtype", choices=DTYPE_CHOICES, help="autocast precision (default: auto: bf16 where supported, "
                                                          "else fp16 on GPU, else fp32)")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    g.add_argument("--seed", type=int, help=f"random seed (default: {d['seed']})")
    g.add_argument("--max_steps", type=int, help="stop after N optimizer steps (default: 0 = all epochs); "
                                                 "the schedule is planned for the capped length")
    g.add_argument("--fsdp", action="store_true", default=None, help="under torchrun: shard the model with FSDP2 "
                                                                     "instead of DDP")

    g = p.add_argument_group("checkpoints and monitoring")
    g.add_argument("--save_steps", type=int, help="write the resumable state every N steps (0 = only at epoch "
                                                  f"ends; default: {d['save_steps']})")
    g.add_argument("--resume", nargs="?", const="latest",
                   help="continue from a training state (bare --resume: the latest in --output_dir)")
    g.add_argument("--eval_interval", type=int, help="evaluate and sample every N steps (0 = only at the end; "
                                                     f"default: {d['eval_interval']})")
    g.add_argument("--eval_batches", type=int, help="held-out batches per evaluation "
                                                    f"(default: {d['eval_batches']})")
    g.add_argument("--report_to", help="none, tensorboard, wandb (comma-separated; default: none)")
    return p


def training_config(args, command: str):
    """The `TrainConfig` of a parsed command line: the command's defaults, then the --config file, then the flags
    given (those not None)."""
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("func", "command", "config")}
    return build_config(command, given, args.config)


def parse_args(argv=None, command: str = "train"):
    """The resolved `TrainConfig` of `minimind COMMAND ARGV...` (train, lora, dpo, distill): for Python use and
    tests that want a command line's settings without running it."""
    from ..train.setup import resolve
    from . import command_parser

    return resolve(training_config(command_parser(command).parse_args(argv), command))


def add_arguments(p):
    add_training_flags(p)


def main(args):
    from ..train.pretrain import run

    run(training_config(args, "train"))
