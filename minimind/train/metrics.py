"""What a run says and records: the console (one `logging` set-up for the trainer, the stages and the data code, and
the seed's status lines), metrics.jsonl, TensorBoard / W&B, and the loss curve drawn at the end.
"""

import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("minimind")

# The seed's train.py printed these lines, and what was built on it (scripts that watch a run's output, the seed's
# docs, tests/test_train.py) looks for them word for word; so they stay exactly as the seed wrote them, Chinese
# included, here in one place. Everything else a run says is in English.
PROGRESS_LINES = {
    "banner": "MiniMind 训练配置:",
    "device": "使用设备: {device}",
    "init": "初始化模型...",
    "loaded": "已加载预训练权重: {path}",
    "sizes": "模型参数: {params}; 训练样本: {train}; 验证样本: {val}",
    "start": "开始训练 {epochs} 个epoch... {detail}",
    "progress": "Epoch [{epoch}/{epochs}], Step [{step}/{steps}], Loss: {loss:.4f}, Avg Loss: {avg:.4f}",
    "epoch_saved": "模型已保存到: {path}",
    "adapter_saved": "适配器已保存到: {path}",
    "final_saved": "训练完成! 最终模型已保存到: {path}",
}


def seed_line(name: str, **values) -> str:
    return PROGRESS_LINES[name].format(**values)


def banner(settings: dict) -> str:
    """The seed's settings banner."""
    rule = "=" * 50
    return "\n".join([rule, seed_line("banner"), rule, *(f"{k}: {v}" for k, v in settings.items()), rule])


class _ConsoleHandler(logging.Handler):
    """Records to the console through tqdm, so that a progress bar is redrawn below them rather than broken: info
    on stdout, warnings and errors on stderr."""

    def emit(self, record):
        try:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=sys.stderr if record.levelno >= logging.WARNING else sys.stdout)
        except Exception:
            self.handleError(record)


def setup_logging(main: bool = True) -> None:
    """Configure the "minimind" logger (the trainer's, the stages' and the data code's): plain messages on the
    console, info and up on the main process, warnings only on the others. Calling it again changes nothing else."""
    if not any(isinstance(h, _ConsoleHandler) for h in log.handlers):
        log.addHandler(_ConsoleHandler())
    log.setLevel(logging.INFO if main else logging.WARNING)


class MetricsLog:
    """A run's numbers, one record per log step or evaluation: appended to OUT/metrics.jsonl, and sent to TensorBoard
    (OUT/tensorboard) and W&B as `report_to` says ("none", "tensorboard", "wandb", comma-separated). Only the main
    process writes; elsewhere every call does nothing. `close` draws OUT/loss_curve.png."""

    def __init__(self, out: Path, report_to: str, settings: dict, main: bool = True):
        self.out, self.main = Path(out), main
        self.file, self.writers = None, []
        if not main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "metrics.jsonl"
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)
        if path.stat().st_size:  # a resumed run's: a last line cut short (a full disk) stays a line of its own
            with open(path, "rb") as f:
                f.seek(-1, 2)
                if f.read(1) != b"\n":
                    self.file.write("\n")
        for kind in [k.strip() for k in (report_to or "none").split(",") if k.strip()]:
            try:
                if kind == "tensorboard":
                    from torch.utils.tensorboard import SummaryWriter
                    self.writers.append(("tb", SummaryWriter(str(self.out / "tensorboard"))))
                elif kind == "wandb":
                    import wandb
                    wandb.init(project="minimind", config=settings, dir=str(self.out))
                    self.writers.append(("wandb", wandb))
                elif kind != "none":
                    raise ValueError(f"--report_to: unknown target {kind!r}; use none, tensorboard or wandb")
            except ImportError:
                raise ValueError(f"--report_to {kind} needs the {kind} package: pip install {kind}") from None

    def log(self, record: dict) -> None:
        if not self.main:
            return
        record = {k: (v.item() if hasattr(v, "item") else v) for k, v in record.items()}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        for kind, w in self.writers:
            if kind == "tb":
                for k, v in scalars.items():
                    w.add_scalar(k, v, record["step"])
            else:
                w.log(scalars, step=record["step"])

    def close(self) -> None:
        if not self.main:
            return
        self.file.close()
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
        try:
            r = json.loads(line)
        except ValueError:  # a line cut short by a full disk
            continue
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
