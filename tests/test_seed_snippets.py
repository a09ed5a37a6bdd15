"""Every code snippet of the seed quick reference that touches the model runs as written.

The snippets are read verbatim from `tests/data/seed_quick_reference.md` (a copy of the seed
document); the test only supplies what the document leaves to the caller (device, dataloader,
vocab_size, ...).
"""

import math
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

SEED = Path(__file__).parent / "data" / "seed_quick_reference.md"
BLOCKS = re.findall(r"```python\n(.*?)```", SEED.read_text(encoding="utf-8"), re.S)


def block(first_line: str, nth: int = 0) -> str:
    found = [b for b in BLOCKS if b.lstrip().startswith(first_line)]
    assert len(found) > nth, f"seed snippet starting with {first_line!r} not found"
    return found[nth]


def run(code: str, ns: dict) -> dict:
    exec(compile(code, str(SEED), "exec"), ns)
    return ns


def test_preset_configs_build():
    from minimind import MiniMindConfig, MiniMindForCausalLM

    sizes = []
    for nth in range(5):
        config = run(block("config = MiniMindConfig(", nth), {"MiniMindConfig": MiniMindConfig})["config"]
        with torch.device("meta"):
            sizes.append(sum(p.numel() for p in MiniMindForCausalLM(config).parameters()))
    small, medium, large, moe, yarn = sizes
    assert 20e6 < small < 60e6 and 150e6 < medium < 300e6 and 0.9e9 < large < 1.3e9  # ~50M / ~200M / ~1B
    moe_config = run(block("config = MiniMindConfig(", 3), {"MiniMindConfig": MiniMindConfig})["config"]
    assert moe_config.use_moe and moe_config.n_routed_experts == 8 and moe > small
    yarn_config = run(block("config = MiniMindConfig(", 4), {"MiniMindConfig": MiniMindConfig})["config"]
    assert yarn_config.rope_scaling["type"] == "yarn" and yarn_config.max_position_embeddings == 32768


def test_schedule_formulas():
    ns = run(block("warmup_steps"), {"total_steps": 1000})
    assert ns["warmup_steps"] == 100
    ns = run(block("lr = base_lr"), {"base_lr": 1e-4, "progress": 0.5, "cos": math.cos, "π": math.pi})
    assert ns["lr"] == pytest.approx(5e-5)


@pytest.fixture
def seed_ns(tmp_path, monkeypatch):
    """Run the model snippets in order, in one namespace, as a reader of the document would."""
    from minimind import MiniMindConfig, MiniMindForCausalLM

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    # The document loads 'model.pth' from the working directory: make one as the training script does.
    small = MiniMindForCausalLM(MiniMindConfig(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                                               num_key_value_heads=2))
    torch.save(small.state_dict(), "model.pth")
    vocab_size = 6400
    data = torch.randint(3, vocab_size, (2, 2, 17))
    dataloader = [(x[:, :-1].contiguous(), x[:, 1:].contiguous()) for x in data]
    return {"torch": torch, "nn": nn, "F": F, "device": "cpu", "vocab_size": vocab_size, "epochs": 1,
            "dataloader": dataloader, "eos_token_id": 2, "expected": small.state_dict()}


def test_model_snippets_run_as_written(seed_ns, capsys):
    ns = run(block("from minimind import MiniMindConfig, MiniMindForCausalLM"), seed_ns)
    model = ns["model"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, ns["expected"][name]), name  # model.pth loaded

    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    run(block("optimizer = torch.optim.AdamW"), ns)  # standard training loop
    assert not torch.equal(before, model.model.layers[0].self_attn.q_proj.weight)
    assert torch.isfinite(ns["loss"])
    with warnings.catch_warnings():  # torch.cuda.amp on a CPU-only machine warns and disables itself
        warnings.simplefilter("ignore")
        run(block("from torch.cuda.amp import autocast, GradScaler"), ns)  # mixed-precision loop
    assert torch.isfinite(ns["loss"])

    prompt = torch.randint(3, 6400, (1, 5))
    run(block("@torch.no_grad()", 0), ns)
    sampled = ns["generate"](model, prompt, max_new_tokens=8)
    assert sampled.shape[1] <= 13 and torch.equal(sampled[:, :5], prompt)

    run(block("@torch.no_grad()", 1), ns)
    cached = ns["generate_with_cache"](model, prompt, max_new_tokens=8)
    ids = prompt  # the same greedy decode without the cache
    with torch.no_grad():
        for _ in range(cached.shape[1] - prompt.shape[1]):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, ids)

    run(block("def top_p_sampling"), ns)
    logits = torch.tensor([3.0, 2.0, 1.0, -5.0, -5.0])
    picks = {ns["top_p_sampling"](logits.clone(), top_p=0.7).item() for _ in range(50)}
    assert picks <= {0, 1} and 0 in picks

    ns.update(epoch=0, config=ns["config"])
    run(block("# 保存"), ns)  # checkpoint dict save / load (torch.load's default weights_only=True)
    assert ns["start_epoch"] == 1

    run(block("def count_parameters"), ns)
    run(block("# 打印模型架构"), ns)
    out = capsys.readouterr().out
    assert "总参数: 25,829,888" in out and "MiniMindForCausalLM" in out
    assert "model.layers.0.self_attn.q_proj.weight" in out
