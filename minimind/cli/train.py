"""`python train.py` / `minimind train`: pretrain or fine-tune (SFT) a MiniMind model.

Takes every flag of the seed's train.py with its default, plus the ones a real run needs. With no
arguments it pretrains the seed's model on the built-in corpus.

    python train.py                                                    # seed defaults, built-in corpus
    python train.py --preset tiny --max_steps 300 --output_dir out     # a quick CPU run
    python train.py --stage sft --pretrained_path out --output_dir sft # fine-tune on conversations
    torchrun --nproc_per_node 4 train.py --batch_size 16               # DDP on 4 GPUs
"""

import argparse

from ..presets import PRESETS
from ..presets import SEED_MODEL_DEFAULTS as SEED


def add_training_flags(p: argparse.ArgumentParser, stage_choices=("pretrain", "sft")):
    """The flags every training stage shares (used by train, and by lora / dpo / distill)."""
    g = p.add_argument_group("model (seed flags; a --preset fills those not given)")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None, help="named model size")
    g.add_argument("--hidden_size", type=int, default=None, help=f"hidden dimension (default: {SEED['hidden_size']})")
    g.add_argument("--num_layers", type=int, default=None, help=f"number of layers (default: {SEED['num_layers']})")
    g.add_argument("--num_heads", type=int, default=None, help=f"attention heads (default: {SEED['num_heads']})")
    g.add_argument("--num_kv_heads", type=int, default=None, help="key/value heads, GQA "
                   f"(default: {SEED['num_kv_heads']})")
    g.add_argument("--vocab_size", type=int, default=None, help=f"vocabulary size (default: {SEED['vocab_size']})")
    g.add_argument("--max_seq_len", type=int, default=512, help="training sequence length (default: %(default)s)")
    g.add_argument("--dropout", type=float, default=0.1, help="dropout rate (default: %(default)s)")
    g.add_argument("--use_moe", type=int, choices=(0, 1), default=None, help="mixture of experts "
                   f"(default: {SEED['use_moe']})")

    g = p.add_argument_group("training (seed flags)")
    g.add_argument("--epochs", type=int, default=3, help="training epochs (default: %(default)s)")
    g.add_argument("--batch_size", type=int, default=4, help="micro-batch size per process (default: %(default)s)")
    g.add_argument("--learning_rate", type=float, default=1e-4, help="peak learning rate (default: %(default)s)")
    g.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay (default: %(default)s)")
    g.add_argument("--grad_clip", type=float, default=1.0, help="gradient clipping norm, "
                   "0 = off (default: %(default)s)")

    g = p.add_argument_group("other (seed flags)")
    g.add_argument("--device", default=None, help="cuda, cuda:N, mps or cpu (default: the best available)")
    g.add_argument("--output_dir", default="./output", help="where models and state go (default: %(default)s)")
    g.add_argument("--pretrained_path", default="", help="start from these weights: .pth, .safetensors or a "
                                                         "model directory (default: none)")
    g.add_argument("--log_interval", type=int, default=10, help="log every N steps (default: %(default)s)")
    g.add_argument("--save_interval", type=int, default=1, help="save model_epoch_N.pth "
                   "every N epochs (default: %(default)s)")

    g = p.add_argument_group("data")
    g.add_argument("--stage", choices=stage_choices, default=stage_choices[0], help="what to train on")
    g.add_argument("--data", default=None, help="file, folder, glob or prepared shards (default: built-in corpus)")
    g.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the shipped 6400-token one)")
    g.add_argument("--skip_bad_records", action="store_true", help="warn about and skip malformed records")
    g.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes (default: %(default)s)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--accumulation_steps", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--warmup_ratio", type=float, default=0.05, help="warmup as a fraction of all steps")
    g.add_argument("--warmup_steps", type=int, default=None, help="warmup steps (overrides --warmup_ratio)")
    g.add_argument("--min_lr_ratio", type=float, default=0.1, help="cosine decays to learning_rate * this")
    g.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="autocast precision (auto: bf16 where supported, else fp16 on GPU, else fp32)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--max_steps", type=int, default=0, help="stop after N optimizer steps (0 = all epochs); "
                                                            "the schedule is planned for the capped length")
    g.add_argument("--fsdp", action="store_true", help="under torchrun: shard the model with FSDP2 instead of DDP")

    g = p.add_argument_group("checkpoints and monitoring")
    g.add_argument("--save_steps", type=int, default=200, help="write the resumable state every N steps (0 = "
                                                               "only at epoch ends)")
    g.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from a training state (bare --resume: the latest in --output_dir)")
    g.add_argument("--eval_interval", type=int, default=200, help="evaluate and sample every N steps (0 = "
                                                                  "only at the end)")
    g.add_argument("--eval_batches", type=int, default=50, help="held-out batches per evaluation")
    g.add_argument("--report_to", default="none", help="none, tensorboard, wandb (comma-separated)")
    return p


def add_arguments(p):
    add_training_flags(p)


def build_parser(prog: str = "minimind train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_flags(p)
    return p


def main(args):
    from ..train.pretrain import run
    from ..train.setup import resolve_args

    run(resolve_args(args))
