"""The training loop shared by every stage (pretrain, SFT, LoRA, DPO, distillation).

A stage differs only in its model, its data and its `loss_fn(model, batch) -> (loss, metrics)`; the
loop itself handles the rest: AdamW (decay on weight matrices only), warmup + cosine schedule,
gradient accumulation, clipping, autocast (bf16, or fp16 with a GradScaler), a NaN/inf guard,
DDP / FSDP2 under `torchrun`, periodic evaluation and samples, logging (console, progress bar,
metrics.jsonl, TensorBoard / W&B), and checkpoints that resume exactly.

Data order is a pure function of (seed, epoch): one global permutation per epoch, consumed in
chunks of the global batch, each rank and micro-step taking its slice. The position saved in a
checkpoint is the number of samples consumed, so a run resumes exactly where it stopped, also on
a different number of processes.
"""

import contextlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ..io import atomic_save

STATE_FILE = "training_state.pt"


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss kept being NaN); the message says why and what to try."""


# --- devices, precision, distributed -----------------------------------------------------------------

def best_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' = bf16 where the hardware does it natively (recent GPUs, CPUs with AVX512-BF16/AMX), else
    fp16 on older GPUs, else fp32."""
    if name != "auto":
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return torch.float32


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


# --- optimisation --------------------------------------------------------------------------------------

def lr_at(step: int, total_steps: int, warmup_steps: int, max_lr: float, min_lr: float) -> float:
    """Linear warmup to max_lr over warmup_steps, then cosine decay to min_lr at total_steps."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices (2-D and up) only; never on norms or biases. The embedding is a
    weight matrix and decays too: it is tied to the output head, where decay regularises like any
    other projection (as in nanoGPT and the Llama recipes)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lm_loss(model, batch):
    """Next-token cross-entropy on `labels` (-100 = no loss) plus the MoE load-balancing loss."""
    out = model(batch["input_ids"], attention_mask=batch.get("attention_mask"), labels=batch["labels"])
    return out.loss + out.aux_loss, {"ce": out.loss.detach(), "aux": out.aux_loss.detach()}


def count_tokens(batch: dict) -> int:
    """Real tokens in a batch: the ones of every `*attention_mask` (DPO batches have two), else every `*input_ids`."""
    masks = [v for k, v in batch.items() if k.endswith("attention_mask")]
    if masks:
        return sum(int(m.sum()) for m in masks)
    return sum(v.numel() for k, v in batch.items() if k.endswith("input_ids"))


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


# --- data order ----------------------------------------------------------------------------------------

class EpochBatches(torch.utils.data.Sampler):
    """Index batches for one rank: a permutation seeded by (seed, epoch), from sample `start` on.

    Optimizer step s covers global samples [s*G, (s+1)*G) with G = batch * world * accumulation; inside
    it, micro-step a of rank r takes the slice starting at (a * world + r) * batch.
    """

    def __init__(self, n: int, batch: int, world: int, rank: int, accumulation: int, seed: int, epoch: int,
                 start: int = 0, shuffle: bool = True):
        self.batch, self.world, self.rank, self.accumulation = batch, world, rank, accumulation
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        self.order = torch.randperm(n, generator=g).tolist() if shuffle else list(range(n))
        self.global_batch = batch * world * accumulation
        self.steps = n // self.global_batch
        self.start = start

    def __iter__(self):
        for s in range(self.start // self.global_batch, self.steps):
            for a in range(self.accumulation):
                at = s * self.global_batch + (a * self.world + self.rank) * self.batch
                yield self.order[at:at + self.batch]

    def __len__(self):
        return (self.steps - self.start // self.global_batch) * self.accumulation


# --- the loop ------------------------------------------------------------------------------------------

@dataclass
class TrainState:
    step: int = 0  # optimizer steps done, over all epochs
    epoch: int = 0  # current epoch (0-based)
    consumed: int = 0  # samples of this epoch already used
    bad_steps: int = 0  # consecutive skipped (non-finite) steps
    skipped_total: int = 0
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    best_eval: float = field(default=float("inf"))


class Trainer:
    """Runs `loss_fn` over `train_set` with everything a real training run needs. See the module docstring.

    `args` carries the run's settings (the `minimind train` flags): epochs, batch_size, accumulation_steps,
    learning_rate, min_lr_ratio, warmup_ratio/warmup_steps, weight_decay, grad_clip, dtype, max_steps,
    log_interval, eval_interval, save_steps, save_interval, seed, num_workers, output_dir, report_to,
    compile, fsdp. `save_model(model, output_dir, final)` writes the stage's model files (rank 0 only).
    """

    MAX_BAD_STEPS = 5

    def __init__(self, model, args, train_set, val_set=None, *, loss_fn=lm_loss, collate_fn=None,
                 save_model=None, sample_fn=None, dist_info: Dist | None = None, device=None):
        self.args = args
        self.dist = dist_info or Dist()
        self.device = torch.device(device or args.device)
        self.dtype = resolve_dtype(args.dtype, self.device)
        self.model = model.to(self.device)
        self.train_set, self.val_set = train_set, val_set
        self.loss_fn, self.collate_fn = loss_fn, collate_fn
        self.save_model, self.sample_fn = save_model, sample_fn
        self.out = Path(args.output_dir)
        self.state = TrainState()

        self.sharded = bool(getattr(args, "fsdp", False)) and self.dist.world > 1  # FSDP2: parameters are DTensors
        self.global_batch = args.batch_size * self.dist.world * args.accumulation_steps
        self.steps_per_epoch = len(train_set) // self.global_batch
        if self.steps_per_epoch == 0:
            raise TrainingError(f"the training set has {len(train_set)} samples, fewer than one global batch "
                                f"({args.batch_size} x {self.dist.world} processes x {args.accumulation_steps} "
                                "accumulation steps); use a smaller --batch_size or more data")
        self.total_steps = self.steps_per_epoch * args.epochs
        if args.max_steps:
            self.total_steps = min(self.total_steps, args.max_steps)
        warmup = args.warmup_steps if args.warmup_steps is not None else round(args.warmup_ratio * self.total_steps)
        self.warmup_steps = min(warmup, self.total_steps)

        self.wrapped = self._wrap(self.model)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, args.weight_decay), lr=args.learning_rate,
                                           betas=(0.9, 0.999))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.metrics_file = None
        self.writers = []
        self.last_eval = None  # (step, result): the end-of-run evaluation is not repeated

    # -- setup --
    def _wrap(self, model):
        if self.sharded:
            from torch.distributed.fsdp import fully_shard
            for layer in model.model.layers:
                fully_shard(layer)
            fully_shard(model)
            wrapped = model
        elif self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        else:
            wrapped = model
        if getattr(self.args, "compile", False):
            wrapped = torch.compile(wrapped)
        return wrapped

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def loader(self, dataset, epoch: int, start: int, shuffle: bool = True, batch: int | None = None):
        sampler = EpochBatches(len(dataset), batch or self.args.batch_size, self.dist.world, self.dist.rank,
                               self.args.accumulation_steps if shuffle else 1, self.args.seed, epoch, start, shuffle)
        # Its own generator, so creating workers never draws from the global RNG (exact resume).
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=self.collate_fn,
                          num_workers=self.args.num_workers, generator=torch.Generator().manual_seed(self.args.seed),
                          pin_memory=self.device.type == "cuda")

    def to_device(self, batch):
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    # -- checkpoints --
    def model_state_dict(self):
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
            return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def optimizer_state_dict(self):
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
            return get_optimizer_state_dict(self.model, self.optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.optimizer.state_dict()

    def export_model(self, final: bool, epoch: int | None = None):
        """Hand the model to the stage's `save_model` on rank 0; under FSDP, as a plain unsharded copy."""
        if self.save_model is None:
            return
        model = self.model
        if self.sharded:
            state = self.model_state_dict()  # a collective: every rank takes part
            if not self.dist.main:
                return
            model = type(self.model)(self.model.config)
            model.load_state_dict(state)
        if self.dist.main:
            self.save_model(model, self.out, final=final, epoch=epoch)

    def save_state(self):
        model_sd, optim_sd = self.model_state_dict(), self.optimizer_state_dict()  # collective under FSDP
        if not self.dist.main:
            return
        state = {"model": model_sd, "optimizer": optim_sd, "scaler": self.scaler.state_dict(),
                 "train": vars(self.state), "rng": rng_state(), "world": self.dist.world}
        atomic_save(state, self.out / STATE_FILE)

    def load_state(self, path):
        path = Path(path)
        if path.is_dir():
            path = path / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no training state to resume from (it is written every --save_steps "
                                    "steps and at each epoch end)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: cannot read the training state ({type(e).__name__}); "
                             "it may be damaged") from None
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )
            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, state["model"], options=opts)
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=opts)
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.state = TrainState(**state["train"])
        if state.get("world", 1) == self.dist.world:
            set_rng_state(state["rng"])
        else:  # a different world size cannot replay per-rank randomness; data order is still exact
            torch.manual_seed(self.args.seed + self.state.step)
        return path

    # -- logging --
    def open_logs(self):
        if not self.dist.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.metrics_file = open(self.out / "metrics.jsonl", "a", encoding="utf-8")
        for kind in (getattr(self.args, "report_to", "none") or "none").split(","):
            try:
                if kind == "tensorboard":
                    from torch.utils.tensorboard import SummaryWriter
                    self.writers.append(("tb", SummaryWriter(str(self.out / "tensorboard"))))
                elif kind == "wandb":
                    import wandb
                    wandb.init(project="minimind", config={k: v for k, v in vars(self.args).items() if not callable(v)},
                               dir=str(self.out))
                    self.writers.append(("wandb", wandb))
                elif kind != "none":
                    raise ValueError(f"--report_to: unknown target {kind!r}; use none, tensorboard or wandb")
            except ImportError:
                raise ValueError(f"--report_to {kind} needs the {kind} package: pip install {kind}") from None

    def log(self, record: dict):
        if not self.dist.main:
            return
        record = {k: (float(v) if torch.is_tensor(v) else v) for k, v in record.items()}
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        for kind, w in self.writers:
            scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
            if kind == "tb":
                for k, v in scalars.items():
                    w.add_scalar(k, v, record["step"])
            else:
                w.log(scalars, step=record["step"])

    def say(self, text: str):
        if self.dist.main:
            from tqdm import tqdm
            tqdm.write(text)

    # -- evaluation --
    @torch.no_grad()
    def evaluate(self, max_batches: int | None = None):
        """Mean loss over the held-out set (all ranks' batches averaged), its perplexity, and the mean of each metric
        the loss_fn returns (as eval_NAME: DPO's accuracy and margin, distillation's KL)."""
        if self.val_set is None or len(self.val_set) == 0:
            return None
        max_batches = max_batches or getattr(self.args, "eval_batches", 50)
        self.model.eval()
        total = torch.zeros(2, device=self.device)
        metric_sums = {}
        per_rank, n = self.args.batch_size, len(self.val_set)
        n_batches = min(max_batches, max(1, n // (per_rank * self.dist.world)))  # the same on every rank
        collate = self.collate_fn or torch.utils.data.default_collate
        for i in range(n_batches):
            start = (i * self.dist.world + self.dist.rank) * per_rank
            batch = collate([self.val_set[j % n] for j in range(start, start + per_rank)])
            with self.autocast():
                loss, metrics = self.loss_fn(self.wrapped, self.to_device(batch))
            total += torch.stack([loss.float().detach(), torch.ones((), device=self.device)])
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + torch.as_tensor(v, device=self.device).float().detach()
        names = sorted(metric_sums)
        sums = torch.stack([metric_sums[k] for k in names]) if names else torch.zeros(0, device=self.device)
        if self.dist.world > 1:
            dist.all_reduce(total)
            dist.all_reduce(sums)
        self.model.train()
        if total[1] == 0:
            return None
        loss = (total[0] / total[1]).item()
        means = dict(zip(names, (sums / total[1]).tolist()))
        return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50)), **{f"eval_{k}": v for k, v in means.items()}}

    def run_eval(self):
        if self.last_eval is not None and self.last_eval[0] == self.state.step:
            return self.last_eval[1]
        result = self.evaluate()
        self.last_eval = (self.state.step, result)
        if result and self.dist.main:
            self.say(f"Eval @ step {self.state.step}: loss {result['eval_loss']:.4f}, "
                     f"perplexity {result['eval_ppl']:.2f}")
            self.log({"step": self.state.step, "epoch": self.state.epoch + 1, **result})
        if self.sample_fn is not None and self.dist.main and not self.sharded:  # rank 0 alone can't run a shard
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(self.args.seed)
                self.model.eval()
                text = self.sample_fn(self.model)
                self.model.train()
            self.say(f"Sample: {text!r}")
            self.log({"step": self.state.step, "sample": text})
        return result

    # -- the loop --
    def train_step(self, batches):
        """One optimizer step over `accumulation_steps` micro-batches. Returns (loss, grad_norm, tokens, metrics)
        or None when the step was skipped because the loss or the gradients were not finite."""
        args = self.args
        lr = lr_at(self.state.step, self.total_steps, self.warmup_steps, args.learning_rate,
                   args.learning_rate * args.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total_loss, tokens, metrics = torch.zeros((), device=self.device), 0, {}
        for i, batch in enumerate(batches):
            batch = self.to_device(batch)
            sync = i == len(batches) - 1 or not isinstance(self.wrapped, torch.nn.parallel.DistributedDataParallel)
            with (contextlib.nullcontext() if sync else self.wrapped.no_sync()), self.autocast():
                loss, m = self.loss_fn(self.wrapped, batch)
                loss = loss / len(batches)
            self.scaler.scale(loss).backward()
            total_loss += loss.detach().float()
            tokens += count_tokens(batch)
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + float(v) / len(batches)
        if self.dist.world > 1:
            dist.all_reduce(total_loss)  # a sum, then the mean (older torch releases have no ReduceOp.AVG in Gloo)
            total_loss /= self.dist.world
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip if args.grad_clip > 0 else float("inf"))
        finite = bool(torch.isfinite(total_loss)) and (self.scaler.is_enabled() or bool(torch.isfinite(grad_norm)))
        if finite:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if not finite:
            return None
        return total_loss.item(), float(grad_norm), tokens * self.dist.world, metrics, lr

    def fit(self):
        args = self.args
        self.open_logs()
        if args.resume:
            path = self.load_state(args.resume)  # replaces self.state
            self.say(f"Resumed from {path}: step {self.state.step}, epoch {self.state.epoch + 1}, "
                     f"{self.state.consumed} samples into the epoch")
        st = self.state
        self.model.train()
        from tqdm import tqdm
        live = sys.stderr.isatty()  # in a log file, redraw rarely
        bar = tqdm(total=self.total_steps, initial=st.step, disable=not self.dist.main, dynamic_ncols=True,
                   unit="step", mininterval=1.0 if live else 30.0, file=sys.stderr)
        t_last, tokens_since = time.perf_counter(), 0
        done = st.step >= self.total_steps
        while not done and st.epoch < args.epochs:
            batches = iter(self.loader(self.train_set, st.epoch, st.consumed))
            while st.consumed + self.global_batch <= self.steps_per_epoch * self.global_batch:
                micro = [next(batches) for _ in range(args.accumulation_steps)]
                result = self.train_step(micro)
                st.consumed += self.global_batch
                if result is None:
                    st.bad_steps += 1
                    st.skipped_total += 1
                    self.say(f"Step {st.step + 1}: loss or gradients not finite, step skipped "
                             f"({st.bad_steps} in a row)")
                    self.log({"step": st.step, "skipped": True})
                    if st.bad_steps >= self.MAX_BAD_STEPS:
                        raise TrainingError(
                            f"{st.bad_steps} steps in a row had a NaN/inf loss or gradient (step {st.step + 1}); "
                            "lower --learning_rate, keep --grad_clip on, or use --dtype bf16/fp32 instead of fp16")
                    continue
                loss, grad_norm, tokens, metrics, lr = result
                st.bad_steps = 0
                st.step += 1
                st.epoch_loss_sum += loss
                st.epoch_loss_count += 1
                tokens_since += tokens
                bar.update(1)
                step_in_epoch = st.consumed // self.global_batch
                if st.step % args.log_interval == 0 or st.step == self.total_steps:
                    now = time.perf_counter()
                    tps = tokens_since / max(now - t_last, 1e-9)
                    t_last, tokens_since = now, 0
                    avg = st.epoch_loss_sum / st.epoch_loss_count
                    self.say(f"Epoch [{st.epoch + 1}/{args.epochs}], Step [{step_in_epoch}/{self.steps_per_epoch}], "
                             f"Loss: {loss:.4f}, Avg Loss: {avg:.4f}")
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
                    self.log({"step": st.step, "epoch": st.epoch + 1, "loss": loss, "avg_loss": avg, "lr": lr,
                              "grad_norm": grad_norm, "tokens_per_s": tps, **metrics})
                if args.eval_interval and st.step % args.eval_interval == 0:
                    self.run_eval()
                if st.step >= self.total_steps:
                    done = True
                    break
                if args.save_steps and st.step % args.save_steps == 0:
                    self.save_state()
            if not done or st.consumed >= self.steps_per_epoch * self.global_batch:
                self.end_epoch()
            if done:
                break
        bar.close()
        result = self.run_eval()
        self.save_state()
        self.export_model(final=True)
        self.finish(result)
        if self.dist.world > 1:
            dist.barrier()  # rank 0 saves and plots after the others are done: leave the group together
        return result

    def end_epoch(self):
        st, args = self.state, self.args
        finished_epoch = st.epoch + 1
        if args.save_interval and finished_epoch % args.save_interval == 0:
            self.export_model(final=False, epoch=finished_epoch)
        st.epoch += 1
        st.consumed = 0
        st.epoch_loss_sum, st.epoch_loss_count = 0.0, 0
        self.save_state()

    def finish(self, result):
        if not self.dist.main:
            return
        if self.metrics_file:
            self.metrics_file.close()
        for kind, w in self.writers:
            w.close() if kind == "tb" else w.finish()
        plot_loss_curve(self.out / "metrics.jsonl", self.out / "loss_curve.png")


def plot_loss_curve(metrics_path: Path, png_path: Path) -> bool:
    """Training loss (and eval loss) against steps, from metrics.jsonl. False if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    train, evals = [], []
    for line in Path(metrics_path).read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if "loss" in r:
            train.append((r["step"], r["loss"]))
        if "eval_loss" in r:
            evals.append((r["step"], r["eval_loss"]))
    if not train:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return True
