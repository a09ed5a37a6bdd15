"""Running one training over several processes under `torchrun`: the process group, the model wrapped for DDP or
sharded with FSDP2, and full (unsharded) state dicts for checkpoints and saved models.

A single process (no torchrun) uses all of this too, as a world of one where every call is a no-op or the plain
module's own.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..kernels.attention import use_fast_attention


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_name.startswith("cuda") else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def wrap(model, dist_info: Dist, device: torch.device, sharded: bool, compile: bool):
    """The module the loop calls: `model` sharded in place with FSDP2 (each decoder layer, then the whole), or in
    DDP when there are several processes, or itself; compiled with `compile`. Parameters stay `model`'s."""
    if sharded:
        from torch.distributed.fsdp import fully_shard
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        wrapped = model
    elif dist_info.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    else:
        wrapped = model
    if not compile:
        return wrapped
    use_fast_attention(model)  # e.g. a hand-written attention backward for bf16 on a CPU, where it is faster
    return torch.compile(wrapped)


def all_reduce_sum(tensor: torch.Tensor, dist_info: Dist) -> torch.Tensor:
    """Sum `tensor` over the processes, in place (a no-op alone). Older torch releases have no ReduceOp.AVG in gloo,
    so a mean is this sum divided by the world size."""
    if dist_info.world > 1:
        dist.all_reduce(tensor)
    return tensor


def full_model_state(model, sharded: bool) -> dict:
    """The model's whole state dict on the CPU; under FSDP a collective, every rank must call it."""
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def full_optimizer_state(model, optimizer, sharded: bool) -> dict:
    """The optimizer's whole state dict; under FSDP a collective, every rank must call it."""
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_full_state(model, optimizer, model_state: dict, optimizer_state: dict, sharded: bool) -> None:
    """Load whole state dicts (as `full_model_state` / `full_optimizer_state` give them) into a model, sharded or not,
    and its optimizer."""
    if sharded:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )
        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, model_state, options=opts)
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=opts)
    else:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)


def unsharded_copy(model, dist_info: Dist, sharded: bool):
    """`model` as a plain module on the main process (None elsewhere): under FSDP a fresh unsharded copy made from
    the gathered state (a collective), else `model` itself."""
    if not sharded:
        return model if dist_info.main else None
    state = full_model_state(model, sharded)
    if not dist_info.main:
        return None
    copy = type(model)(model.config)
    copy.load_state_dict(state)
    return copy
