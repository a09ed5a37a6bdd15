"""The optimizers and the learning-rate schedule the trainer uses: AdamW with no decay on norms and biases, or Muon
for the hidden weight matrices with AdamW for the rest (`build_optimizer`), and warmup + cosine (`lr_at`).
"""

import math

import torch


def lr_at(step: int, total_steps: int, warmup_steps: int, max_lr: float, min_lr: float) -> float:
    """Linear warmup to max_lr over warmup_steps, then cosine decay to min_lr at total_steps."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


def param_groups(params, weight_decay: float) -> list[dict]:
    """The trainable ones of `params` in two groups: weight decay on weight matrices (2-D and up) only; never on
    norms or biases. The embedding is a weight matrix and decays too: it is tied to the output head, where decay
    regularises like any other projection (as in nanoGPT and the Llama recipes)."""
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Optimizers:
    """Several optimizers stepped as one (Muon for the hidden matrices, AdamW for the rest): `param_groups` is all of
    theirs (the schedule sets each group's lr), and the state dict holds each one's in order. GradScaler and the
    checkpoint code treat it as one optimizer."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self, closure=None):
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True):
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers],
                "kinds": [type(o).__name__ for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kinds") != [type(o).__name__ for o in self.optimizers]:
            raise ValueError(f"optimizer state of {state.get('kinds')}, expected {self.state_dict()['kinds']}")
        for o, sd in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(sd)


def muon_params(model: torch.nn.Module) -> tuple[list, list]:
    """(hidden, other): the trainable 2-D weight matrices inside the decoder layers, which Muon orthogonalises, and
    every other trainable parameter (embedding and the head tied to it, norms, biases), which AdamW keeps."""
    hidden, other = [], []
    layers = getattr(getattr(model, "model", model), "layers", None)
    inside = {id(p) for p in layers.parameters()} if layers is not None else set()
    for p in model.parameters():
        if p.requires_grad:
            (hidden if p.dim() == 2 and id(p) in inside else other).append(p)
    return hidden, other


def muon_available() -> bool:
    """Whether this torch has `torch.optim.Muon` with the `adjust_lr_fn` option that `build_optimizer` uses."""
    import inspect

    return hasattr(torch.optim, "Muon") and "adjust_lr_fn" in inspect.signature(torch.optim.Muon).parameters


def build_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float, fused: bool = False):
    """AdamW (betas 0.9, 0.999; decay on weight matrices only), or, for "muon", torch.optim.Muon on the hidden weight
    matrices with its update scaled to AdamW's RMS (adjust_lr_fn="match_rms_adamw"), so one learning rate and one
    weight decay serve both, and AdamW on the rest (`muon_params`). `fused`: AdamW's fused kernel (CPU and CUDA),
    the same update as the per-tensor loop, faster (benchmarks/README.md)."""
    kw = {"fused": True} if fused else {}
    if name == "adamw":
        return torch.optim.AdamW(param_groups(model.parameters(), weight_decay), lr=lr, betas=(0.9, 0.999), **kw)
    if name != "muon":
        raise ValueError(f"optimizer {name!r}: expected adamw or muon")
    if not muon_available():
        raise ValueError(f"--optimizer muon needs torch.optim.Muon with adjust_lr_fn (torch >= 2.9); this is torch "
                         f"{torch.__version__}: upgrade torch, or use --optimizer adamw")
    hidden, other = muon_params(model)
    muon = [torch.optim.Muon(hidden, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
            ] if hidden else []
    adamw = torch.optim.AdamW(param_groups(other, weight_decay), lr=lr, betas=(0.9, 0.999), **kw)
    return Optimizers(*muon, adamw)
