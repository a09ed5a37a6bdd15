"""The resumable training state: one file, `training_state.pt`, in the run's output directory.

It holds the full model and optimizer state (gathered from the shards under FSDP), the GradScaler's, the loop's
counters (`TrainState`: step, epoch, samples consumed, ...), every RNG state and the world size. It is written
atomically every --save_steps steps and at each epoch end, so a run killed at any moment resumes from the last one
exactly: the data order is a function of (seed, epoch) and the samples consumed, and the RNGs continue where they
were. On a different number of processes the per-rank RNG states cannot be replayed: the RNGs are reseeded from
(seed, step) and the data order is still exact.
"""

import random
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write
from .parallel import Dist, full_model_state, full_optimizer_state, load_full_state

STATE_FILE = "training_state.pt"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state()[1].tolist(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), 624, 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: Path, model, optimizer, scaler, train: dict, dist_info: Dist, sharded: bool) -> None:
    """Write the state to `path` (rank 0; under FSDP every rank takes part in gathering it)."""
    model_sd, optim_sd = full_model_state(model, sharded), full_optimizer_state(model, optimizer, sharded)
    if not dist_info.main:
        return
    state = {"model": model_sd, "optimizer": optim_sd, "scaler": scaler.state_dict(), "train": train,
             "rng": rng_state(), "world": dist_info.world}
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def load_training_state(path, model, optimizer, scaler, dist_info: Dist, sharded: bool, seed: int) -> tuple[Path, dict]:
    """Load the state at `path` (the file, or the directory holding it) into model, optimizer, scaler and the RNGs.
    Returns (the file, the loop's counters)."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training state to resume from (it is written every --save_steps "
                                "steps and at each epoch end)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot read the training state ({type(e).__name__}); it may be damaged") from None
    saved_kinds = state["optimizer"].get("kinds", ["AdamW"]) if isinstance(state["optimizer"], dict) else None
    kinds = [type(o).__name__ for o in getattr(optimizer, "optimizers", [optimizer])]
    if saved_kinds != kinds:
        raise ValueError(f"{path}: the state was written by a run with {' + '.join(saved_kinds or ['?'])}, this run "
                         f"uses {' + '.join(kinds)}; resume with the --optimizer that run used")
    load_full_state(model, optimizer, state["model"], state["optimizer"], sharded)
    scaler.load_state_dict(state["scaler"])
    if state.get("world", 1) == dist_info.world:
        set_rng_state(state["rng"])
    else:  # a different world size cannot replay per-rank randomness; data order is still exact
        torch.manual_seed(seed + state["train"]["step"])
    return path, state["train"]
