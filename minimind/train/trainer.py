"""The training loop shared by every stage (pretrain, SFT, LoRA, DPO, distillation).

A stage differs only in its model, its data and its `loss_fn(model, batch) -> (loss, metrics)`; the loop itself
handles the rest: the optimizer (fused AdamW with decay on weight matrices only, or Muon for the hidden matrices plus
AdamW, `--optimizer muon`), warmup + cosine schedule, gradient accumulation, clipping, autocast (bf16, or fp16 with a
GradScaler), a NaN/inf guard, periodic evaluation and samples. Around it, each in
its own module: `parallel.py` (DDP / FSDP2 under `torchrun`), `resume.py` (the state that resumes exactly),
`metrics.py` (console, metrics.jsonl, TensorBoard / W&B, the loss curve).

Data order is a pure function of (seed, epoch): one global permutation per epoch, consumed in chunks of the global
batch, each rank and micro-step taking its slice. The position saved in a checkpoint is the number of samples
consumed, so a run resumes exactly where it stopped, also on a different number of processes.
"""

import contextlib
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..checkpoint import resolve_dtype
from .resume import STATE_FILE, load_training_state, save_training_state
from .config import TrainConfig
from .metrics import MetricsLog, log, seed_line, setup_logging
from .optim import build_optimizer, lr_at
from .parallel import Dist, all_reduce_sum, unsharded_copy, wrap


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss kept being NaN); the message says why and what to try."""


# --- optimisation --------------------------------------------------------------------------------------------------

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


# --- data order ----------------------------------------------------------------------------------------------------

class EpochBatches(torch.utils.data.Sampler):
    """Index batches for one rank: a permutation seeded by (seed, epoch), from sample `start` on.

    Optimizer step s covers global samples [s*G, (s+1)*G) with G = batch * world * accumulation; inside
    it, micro-step a of rank r takes the slice starting at (a * world + r) * batch.

    With `lengths` (one per sample), the permutation is cut into windows of GROUP_WINDOW global batches; each
    window is sorted by length and its global batches are shuffled again: a batch holds samples of similar length
    (little padding) and the order of batches stays random.
    """

    GROUP_WINDOW = 50

    def __init__(self, n: int, batch: int, world: int, rank: int, accumulation: int, seed: int, epoch: int,
                 start: int = 0, shuffle: bool = True, lengths: list[int] | None = None):
        self.batch, self.world, self.rank, self.accumulation = batch, world, rank, accumulation
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        self.order = torch.randperm(n, generator=g).tolist() if shuffle else list(range(n))
        self.global_batch = batch * world * accumulation
        if lengths is not None and shuffle:
            self.order = self._grouped(self.order, lengths, g)
        self.steps = n // self.global_batch
        self.start = start

    def __iter__(self):
        for s in range(self.start // self.global_batch, self.steps):
            for a in range(self.accumulation):
                at = s * self.global_batch + (a * self.world + self.rank) * self.batch
                yield self.order[at:at + self.batch]

    def __len__(self):
        return (self.steps - self.start // self.global_batch) * self.accumulation

    def _grouped(self, order: list[int], lengths: list[int], g: torch.Generator) -> list[int]:
        G, out = self.global_batch, []
        size = G * self.GROUP_WINDOW
        for w in range(0, len(order), size):
            window = sorted(order[w:w + size], key=lambda i: lengths[i])
            batches = [window[b:b + G] for b in range(0, len(window), G)]
            out += [i for k in torch.randperm(len(batches), generator=g).tolist() for i in batches[k]]
        return out


# --- the loop ------------------------------------------------------------------------------------------------------

@dataclass
class TrainState:
    """Where a run stands, beyond its model, optimizer and scaler: saved with them (`save_state`), so that a resumed
    run goes on with the same step, data position, NaN-guard count and epoch loss as the uninterrupted one."""
    step: int = 0  # optimizer steps done, over all epochs
    epoch: int = 0  # current epoch (0-based)
    consumed: int = 0  # samples of this epoch already used
    bad_steps: int = 0  # consecutive skipped (non-finite) steps
    skipped_total: int = 0
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    best_eval: float = field(default=float("inf"))


class Throughput:
    """Tokens per second between readings: `add` counts tokens, `rate()` gives the tokens per second since the
    previous reading (or since it was made) and starts the next interval."""

    def __init__(self):
        self.since, self.tokens = time.perf_counter(), 0

    def add(self, tokens: int):
        self.tokens += tokens

    def rate(self) -> float:
        now = time.perf_counter()
        tps = self.tokens / max(now - self.since, 1e-9)
        self.since, self.tokens = now, 0
        return tps


class Trainer:
    """Runs `loss_fn` over `train_set` with everything a real training run needs. See the module docstring.

    `config` carries the run's settings (the `minimind train` flags; `TrainConfig`). `save_model(model, output_dir,
    final, epoch)` writes the stage's model files (rank 0 only); `sample_fn(model) -> text` shows progress at each
    evaluation. `prepare(model, micro_batches, step, training) -> updates` turns the data's micro-batches into
    what the loss takes, just before a step (under the run's autocast): a list of optimizer steps, each a list of
    micro-batches (RL: the prompts rolled out, then `updates_per_batch` policy updates on the same samples); in
    evaluation (training=False) the first micro-batch of the first update is used. The state is saved only after
    all the updates of one prepared batch, so a resumed run repeats none and skips none. `perplexity_name` says what
    exp(held-out loss) is for this data ("packed held-out perplexity" for pretraining); None: it is not a perplexity
    (DPO, distillation, RL), and is not printed.
    """

    MAX_BAD_STEPS = 5

    def __init__(self, model, config: TrainConfig, train_set, val_set=None, *, loss_fn=lm_loss, collate_fn=None,
                 save_model=None, sample_fn=None, dist_info: Dist | None = None, device=None,
                 perplexity_name: str | None = "held-out perplexity", prepare=None, updates_per_batch: int = 1):
        self.config = c = config
        self.dist = dist_info or Dist()
        self.device = torch.device(device or c.device)
        self.dtype = resolve_dtype(c.dtype, self.device, cpu_bf16=True)
        self.model = model.to(self.device)
        self.train_set, self.val_set = train_set, val_set
        self.loss_fn, self.collate_fn = loss_fn, collate_fn
        self._lengths = None  # the train set's sample lengths, with --group_by_length
        self.save_model, self.sample_fn = save_model, sample_fn
        self.perplexity_name = perplexity_name
        self.prepare = prepare
        self.out = Path(c.output_dir)
        self.state = TrainState()

        self.sharded = c.fsdp and self.dist.world > 1  # FSDP2: parameters are DTensors
        self.global_batch = c.batch_size * self.dist.world * c.accumulation_steps
        self.steps_per_epoch = len(train_set) // self.global_batch
        if self.steps_per_epoch == 0:
            raise TrainingError(f"the training set has {len(train_set)} samples, fewer than one global batch "
                                f"({c.batch_size} x {self.dist.world} processes x {c.accumulation_steps} "
                                "accumulation steps); use a smaller --batch_size or more data")
        self.total_steps = self.steps_per_epoch * c.epochs * updates_per_batch  # optimizer steps
        if c.max_steps:
            self.total_steps = min(self.total_steps, c.max_steps)
        warmup = c.warmup_steps if c.warmup_steps is not None else round(c.warmup_ratio * self.total_steps)
        self.warmup_steps = min(warmup, self.total_steps)

        if c.optimizer != "adamw" and self.sharded:
            raise TrainingError(f"--optimizer {c.optimizer} does not run on FSDP shards (Muon orthogonalises whole "
                                "matrices); use DDP (no --fsdp) or --optimizer adamw")
        self.wrapped = wrap(self.model, self.dist, self.device, self.sharded, c.compile)
        fused = not self.sharded and self.device.type in ("cpu", "cuda")  # not on DTensor shards, nor MPS
        self.optimizer = build_optimizer(self.model, c.optimizer, c.learning_rate, c.weight_decay, fused)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.metrics = None  # a MetricsLog while fit runs
        self.bar = None  # the progress bar while fit runs
        self.throughput = None  # a Throughput while fit runs
        self.last_eval = None  # (step, result): the end-of-run evaluation is not repeated

    def autocast(self):
        """The run's autocast context (bf16 or fp16); none in fp32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def loader(self, dataset, epoch: int, start: int, shuffle: bool = True, batch: int | None = None):
        """This rank's micro-batches of `dataset` for `epoch`, from global sample `start` on (`EpochBatches`)."""
        c = self.config
        lengths = None
        if c.group_by_length and shuffle and hasattr(dataset, "lengths"):
            if self._lengths is None:
                self._lengths = dataset.lengths()
            lengths = self._lengths
        sampler = EpochBatches(len(dataset), batch or c.batch_size, self.dist.world, self.dist.rank,
                               c.accumulation_steps if shuffle else 1, c.seed, epoch, start, shuffle, lengths)
        # Its own generator, so creating workers never draws from the global RNG (exact resume).
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=self.collate_fn, num_workers=c.num_workers,
                          generator=torch.Generator().manual_seed(c.seed), pin_memory=self.device.type == "cuda")

    def to_device(self, batch):
        """The batch's tensors on the run's device (other values as they are)."""
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    # -- saving --
    def export_model(self, final: bool, epoch: int | None = None):
        """Hand the model to the stage's `save_model` on rank 0; under FSDP, as a plain unsharded copy."""
        if self.save_model is None:
            return
        model = unsharded_copy(self.model, self.dist, self.sharded)  # a collective under FSDP
        if model is not None:
            self.save_model(model, self.out, final=final, epoch=epoch)

    def save_state(self):
        """Write OUT/training_state.pt: model, optimizer, scaler, `TrainState` and RNG states (see `resume.py`)."""
        save_training_state(self.out / STATE_FILE, self.model, self.optimizer, self.scaler, asdict(self.state),
                            self.dist, self.sharded)

    def load_state(self, path) -> Path:
        """Restore what `save_state` wrote (from `path`: the file or its folder); returns the file read."""
        path, train = load_training_state(path, self.model, self.optimizer, self.scaler, self.dist, self.sharded,
                                          self.config.seed)
        self.state = TrainState(**train)
        return path

    # -- evaluation --
    @torch.no_grad()
    def evaluate(self, max_batches: int | None = None):
        """Mean loss over the held-out set (all ranks' batches averaged), exp of it, and the mean of each metric the
        loss_fn returns (as eval_NAME: DPO's accuracy and margin, distillation's KL)."""
        if self.val_set is None or len(self.val_set) == 0:
            return None
        max_batches = max_batches or self.config.eval_batches
        self.model.eval()
        total = torch.zeros(2, device=self.device)
        metric_sums = {}
        per_rank, n = self.config.batch_size, len(self.val_set)
        n_batches = min(max_batches, max(1, n // (per_rank * self.dist.world)))  # the same on every rank
        collate = self.collate_fn or torch.utils.data.default_collate
        for i in range(n_batches):
            start = (i * self.dist.world + self.dist.rank) * per_rank
            batch = collate([self.val_set[j % n] for j in range(start, start + per_rank)])
            if self.prepare is not None:
                with self.autocast():
                    batch = self.prepare(self.model, [batch], self.state.step, False)[0][0]
            with self.autocast():
                loss, metrics = self.loss_fn(self.wrapped, self.to_device(batch))
            total += torch.stack([loss.float().detach(), torch.ones((), device=self.device)])
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + torch.as_tensor(v, device=self.device).float().detach()
        names = sorted(metric_sums)
        sums = torch.stack([metric_sums[k] for k in names]) if names else torch.zeros(0, device=self.device)
        all_reduce_sum(total, self.dist)
        all_reduce_sum(sums, self.dist)
        self.model.train()
        if total[1] == 0:
            return None
        loss = (total[0] / total[1]).item()
        means = dict(zip(names, (sums / total[1]).tolist()))
        return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50)), **{f"eval_{k}": v for k, v in means.items()}}

    def run_eval(self):
        """`evaluate` (at most once per step), logged and recorded, then a sample from `sample_fn` under the run's
        seed, with the global random state restored after it. Returns the evaluation."""
        if self.last_eval is not None and self.last_eval[0] == self.state.step:
            return self.last_eval[1]
        result = self.evaluate()
        self.last_eval = (self.state.step, result)
        if result and self.dist.main:
            ppl = f", {self.perplexity_name} {result['eval_ppl']:.2f}" if self.perplexity_name else ""
            log.info(f"Eval @ step {self.state.step}: held-out loss {result['eval_loss']:.4f}{ppl}")
            self.metrics.log({"step": self.state.step, "epoch": self.state.epoch + 1, **result})
        if self.sample_fn is not None and self.dist.main and not self.sharded:  # rank 0 alone can't run a shard
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(self.config.seed)
                self.model.eval()
                text = self.sample_fn(self.model)
                self.model.train()
            log.info(f"Sample: {text!r}")
            self.metrics.log({"step": self.state.step, "sample": text})
        return result

    # -- the loop --
    def train_step(self, batches):
        """One optimizer step over `accumulation_steps` micro-batches. Returns (loss, grad_norm, tokens, metrics, lr)
        or None when the step was skipped because the loss or the gradients were not finite."""
        c = self.config
        lr = lr_at(self.state.step, self.total_steps, self.warmup_steps, c.learning_rate,
                   c.learning_rate * c.min_lr_ratio)
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
        total_loss = all_reduce_sum(total_loss, self.dist) / self.dist.world
        if self.dist.world > 1 and metrics:  # the stage's metrics of the global batch too, not rank 0's share alone
            names = sorted(metrics)
            means = all_reduce_sum(torch.tensor([metrics[k] for k in names], dtype=torch.float64, device=self.device),
                                   self.dist) / self.dist.world
            metrics = dict(zip(names, means.tolist()))
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, c.grad_clip if c.grad_clip > 0 else float("inf"))
        finite = bool(torch.isfinite(total_loss)) and (self.scaler.is_enabled() or bool(torch.isfinite(grad_norm)))
        if finite:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if not finite:
            return None
        return total_loss.item(), float(grad_norm), tokens * self.dist.world, metrics, lr

    def fit(self):
        """Train until `total_steps` optimizer steps are done or the epochs run out, resuming from `config.resume`
        when it is set; then evaluate once more, save the training state and hand over the final model. Returns the
        final evaluation (None without a held-out set)."""
        self.start()
        self.bar = self.progress_bar()
        self.throughput = Throughput()
        while not self.finished and self.state.epoch < self.config.epochs:
            self.run_epoch()
        self.bar.close()
        return self.finish()

    @property
    def finished(self) -> bool:
        """Whether the run has taken all its optimizer steps."""
        return self.state.step >= self.total_steps

    def start(self):
        """The start of `fit`: logging and the metrics log set up, the saved state loaded when resuming, the model
        in training mode."""
        c = self.config
        setup_logging(self.dist.main)
        self.metrics = MetricsLog(self.out, c.report_to, c.to_dict(), self.dist.main)
        if c.resume:
            path = self.load_state(c.resume)  # replaces self.state
            log.info(f"Resumed from {path}: step {self.state.step}, epoch {self.state.epoch + 1}, "
                     f"{self.state.consumed} samples into the epoch")
        self.model.train()

    def progress_bar(self):
        """A tqdm bar over the run's optimizer steps, on the main process only, starting at the steps done."""
        from tqdm import tqdm
        live = sys.stderr.isatty()  # in a log file, redraw rarely
        return tqdm(total=self.total_steps, initial=self.state.step, disable=not self.dist.main, dynamic_ncols=True,
                    unit="step", mininterval=1.0 if live else 30.0, file=sys.stderr)

    def run_epoch(self):
        """The rest of the current epoch, from sample `state.consumed` on, one global batch at a time, until the
        epoch or the run's steps are done; an epoch that ran to its end is closed (`end_epoch`), one that the run
        stopped in is not, so that a longer run resumes inside it."""
        st = self.state
        epoch_samples = self.steps_per_epoch * self.global_batch
        batches = iter(self.loader(self.train_set, st.epoch, st.consumed))
        while st.consumed + self.global_batch <= epoch_samples and not self.finished:
            self.train_batch([next(batches) for _ in range(self.config.accumulation_steps)])
        if not self.finished or st.consumed >= epoch_samples:
            self.end_epoch()

    def train_batch(self, micro: list):
        """One global batch (this rank's `accumulation_steps` micro-batches): the optimizer steps `updates` makes of
        it, until the run's steps are done; then the training state is saved if the steps crossed a multiple of
        `save_steps` (not when the run just finished: `finish` saves it)."""
        st, c = self.state, self.config
        st.consumed += self.global_batch
        step_before = st.step
        for update in self.updates(micro):
            result = self.train_step(update)
            if result is None:
                self.skipped_step()
                continue
            self.after_step(*result)
            if self.finished:
                return
        if c.save_steps and st.step // c.save_steps > step_before // c.save_steps:
            self.save_state()

    def after_step(self, loss: float, grad_norm: float, tokens: int, metrics: dict, lr: float):
        """The bookkeeping of a step taken (`train_step`'s result): the step and the epoch's loss counted, the
        progress logged every `log_interval` steps and at the last, an evaluation every `eval_interval` steps."""
        st, c = self.state, self.config
        st.bad_steps = 0
        st.step += 1
        st.epoch_loss_sum += loss
        st.epoch_loss_count += 1
        self.throughput.add(tokens)
        self.bar.update(1)
        if st.step % c.log_interval == 0 or st.step == self.total_steps:
            self.log_progress(loss, grad_norm, metrics, lr)
        if c.eval_interval and st.step % c.eval_interval == 0:
            self.run_eval()

    def log_progress(self, loss: float, grad_norm: float, metrics: dict, lr: float):
        """The progress line (the seed's format), the bar's postfix and a metrics record for the step just taken."""
        st, c = self.state, self.config
        tps = self.throughput.rate()
        avg = st.epoch_loss_sum / st.epoch_loss_count
        log.info(seed_line("progress", epoch=st.epoch + 1, epochs=c.epochs, loss=loss, avg=avg,
                           step=st.consumed // self.global_batch, steps=self.steps_per_epoch))
        self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
        self.metrics.log({"step": st.step, "epoch": st.epoch + 1, "loss": loss, "avg_loss": avg,
                          "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tps, **metrics})

    def finish(self):
        """The end of `fit`: the final evaluation (reused if this step already had one), the training state and
        the final model saved, the metrics log closed, and every process leaving together. Returns the evaluation."""
        result = self.run_eval()
        self.save_state()
        self.export_model(final=True)
        self.metrics.close()
        if self.dist.world > 1:
            torch.distributed.barrier()  # rank 0 saves and plots after the others are done: leave the group together
        return result

    def updates(self, micro: list) -> list[list]:
        """The optimizer steps to take on these micro-batches: one, unless the stage prepares them (`prepare`)."""
        if self.prepare is None:
            return [micro]
        with self.autocast():
            return self.prepare(self.model, micro, self.state.step, True)

    def skipped_step(self):
        """The NaN guard: count a skipped step; stop after MAX_BAD_STEPS in a row."""
        st = self.state
        st.bad_steps += 1
        st.skipped_total += 1
        log.info(f"Step {st.step + 1}: loss or gradients not finite, step skipped ({st.bad_steps} in a row)")
        self.metrics.log({"step": st.step, "skipped": True})
        if st.bad_steps >= self.MAX_BAD_STEPS:
            raise TrainingError(f"{st.bad_steps} steps in a row had a NaN/inf loss or gradient (step {st.step + 1}); "
                                "lower --learning_rate, keep --grad_clip on, or use --dtype bf16/fp32 instead of fp16")

    def end_epoch(self):
        """Close the current epoch: the model exported every `save_interval` epochs, the next epoch started from
        its first sample, the training state saved."""
        st, c = self.state, self.config
        finished_epoch = st.epoch + 1
        if c.save_interval and finished_epoch % c.save_interval == 0:
            self.export_model(final=False, epoch=finished_epoch)
        st.epoch += 1
        st.consumed = 0
        st.epoch_loss_sum, st.epoch_loss_count = 0.0, 0
        self.save_state()
