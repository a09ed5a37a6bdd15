"""`--compile` (torch.compile of the model the trainer calls) is safe to use: it trains to the same weights as eager
(to rounding), resumes exactly, and works with LoRA adapters, with MoE layers and with Muon. Tiny models; each test
compiles a forward and a backward (~10-30 s on a CPU)."""

import json

import pytest
import torch
from helpers import RandomTokens, tiny_model

from minimind.kernels.attention import FLASH_CPU
from minimind.train.config import TrainConfig
from minimind.train.optim import muon_available
from minimind.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")



def config(tmp_path, **kw):
    return TrainConfig(**{**dict(device="cpu", dtype="fp32", epochs=1, batch_size=4, learning_rate=3e-3,
                                 warmup_steps=0, max_steps=6, log_interval=1, eval_interval=0, eval_batches=2,
                                 save_steps=0, save_interval=0, seed=0, output_dir=str(tmp_path), dropout=0.0),
                          **kw})


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def weights_close(a, b, tol):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert (x - y).abs().max() <= tol, name


@pytest.mark.parametrize("optimizer", ["adamw", pytest.param("muon", marks=pytest.mark.skipif(
    not muon_available(), reason="torch.optim.Muon is in torch >= 2.9"))])
def test_compiled_training_equals_eager_and_resumes_exactly(tmp_path, optimizer):
    eager = tiny_model(vocab=200)
    Trainer(eager, config(tmp_path / "eager", optimizer=optimizer), RandomTokens(), RandomTokens(8)).fit()
    compiled = tiny_model(vocab=200)
    result = Trainer(compiled, config(tmp_path / "compiled", compile=True, optimizer=optimizer), RandomTokens(),
                     RandomTokens(8)).fit()
    assert result["eval_loss"] < 5.3  # evaluated through the compiled model (eval mode, no grad)
    assert losses(tmp_path / "eager") == pytest.approx(losses(tmp_path / "compiled"), abs=1e-4)
    weights_close(eager, compiled, 1e-3)

    calls = {"n": 0}

    def dies_at_step_4(model, batch):  # the state is saved after step 3
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return model(batch["input_ids"], labels=batch["labels"]).loss, {}

    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_model(vocab=200), config(tmp_path / "killed", compile=True, optimizer=optimizer, save_steps=3),
                RandomTokens(), loss_fn=dies_at_step_4).fit()
    resumed = tiny_model(vocab=200)
    Trainer(resumed, config(tmp_path / "killed", compile=True, optimizer=optimizer, resume=str(tmp_path / "killed")),
            RandomTokens()).fit()
    weights_close(compiled, resumed, 1e-6)


def test_compiled_moe_trains_like_eager(tmp_path):
    moe = dict(use_moe=True, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, aux_loss_alpha=0.1)
    eager, compiled = tiny_model(vocab=200, **moe), tiny_model(vocab=200, **moe)
    Trainer(eager, config(tmp_path / "eager", max_steps=3), RandomTokens()).fit()
    # The experts' token counts change every step: dynamo recompiles for new shapes, then treats them as dynamic.
    Trainer(compiled, config(tmp_path / "compiled", max_steps=3, compile=True), RandomTokens()).fit()
    a, b = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert len(a) == len(b) == 3 and a == pytest.approx(b, abs=1e-4)
    weights_close(eager, compiled, 1e-3)


def test_compiled_lora_trains_only_the_adapters(tmp_path):
    from minimind.lora import apply_lora, lora_state_dict

    runs = {}
    for compile in (False, True):
        model = tiny_model(vocab=200)
        base = {k: v.clone() for k, v in model.state_dict().items()}
        apply_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=["q_proj", "v_proj", "up_proj"])
        Trainer(model, config(tmp_path / str(compile), compile=compile, learning_rate=1e-2), RandomTokens()).fit()
        after = model.state_dict()
        assert all(torch.equal(after[k], v) for k, v in base.items())  # the base is frozen
        runs[compile] = lora_state_dict(model)
    assert runs[True].keys() == runs[False].keys() and runs[True]
    for k in runs[True]:
        assert (runs[True][k] - runs[False][k]).abs().max() <= 1e-3, k
    assert any(v.abs().max() > 0 for k, v in runs[True].items() if "lora_B" in k)  # B starts at zero: it trained


@pytest.mark.skipif(not FLASH_CPU, reason="this torch lacks aten._scaled_dot_product_flash_attention_for_cpu, the "
                                           "private op CausalAttention's forward calls")
def test_compiled_bf16_training_takes_the_hand_written_attention_backward(tmp_path, monkeypatch):
    from minimind.kernels.attention import CausalAttention

    traced = []
    backward = CausalAttention.backward
    monkeypatch.setattr(CausalAttention, "backward", staticmethod(lambda ctx, dy: traced.append(dy.shape) or
                                                                  backward(ctx, dy)))
    eager, compiled = tiny_model(vocab=200, hidden=64, num_attention_heads=4, num_key_value_heads=2), \
        tiny_model(vocab=200, hidden=64, num_attention_heads=4, num_key_value_heads=2)
    Trainer(eager, config(tmp_path / "eager", dtype="bf16", max_steps=4), RandomTokens()).fit()
    assert not traced  # eager: SDPA's backward
    Trainer(compiled, config(tmp_path / "compiled", dtype="bf16", max_steps=4, compile=True), RandomTokens()).fit()
    assert traced and traced[0] == (4, 4, 16, 16)  # (batch, heads, tokens, head_dim), traced once per layer
    a, b = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert len(a) == len(b) == 4 and a == pytest.approx(b, abs=2e-2)  # bf16 rounding, not another model
    weights_close(eager, compiled, 2e-2)
