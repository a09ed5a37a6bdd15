"""The batch-1 compiled decode step's own kernels: matrix products as fused reductions (`minimind.kernels.matvec`)
and one-query attention written out (`minimind.kernels.attention.one_query_attention`), each against the library call it
replaces."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minimind.kernels.matvec import MatVec, with_matvecs
from minimind.kernels.attention import one_query_attention
from minimind.quantize import Int8Linear, quantize_int4, quantize_int8

from helpers import tiny_model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("groups", [1, 4])
def test_one_query_attention_equals_sdpa(dtype, groups):
    """Grouped heads (H = groups * Hkv), a padding mask over the cache, fp32 and bf16: the same as SDPA."""
    g = torch.Generator().manual_seed(0)
    B, Hkv, S, D = 3, 2, 11, 16
    q = torch.randn(B, Hkv * groups, 1, D, generator=g).to(dtype)
    k, v = (torch.randn(B, Hkv, S, D, generator=g).to(dtype) for _ in range(2))
    mask = torch.ones(B, 1, 1, S, dtype=torch.bool)
    mask[1, ..., :4] = False  # a left-padded row
    mask[2, ..., 7:] = False  # cache columns not written yet
    for m in (mask, None):
        want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=m, enable_gqa=groups > 1)
        got = one_query_attention(q, k, v, m)
        assert got.shape == q.shape and got.dtype == dtype
        assert torch.allclose(got.float(), want, atol=1e-5 if dtype == torch.float32 else 2e-2)


def test_with_matvecs_wraps_every_plain_linear_and_shares_the_tensors():
    model = tiny_model()
    clone = with_matvecs(model)
    wrapped = [name for name, m in clone.named_modules() if isinstance(m, MatVec)]
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert wrapped == linears and len(linears) == 2 * 7 + 1
    assert clone.model.layers[0].self_attn.q_proj.layer.weight is model.model.layers[0].self_attn.q_proj.weight
    assert {p.data_ptr() for p in clone.parameters()} == {p.data_ptr() for p in model.parameters()}
    with torch.no_grad():  # an in-place update of the model is the clone's too
        model.lm_head.weight.mul_(2)
    ids = torch.tensor([[5, 6, 7]])
    assert torch.equal(clone(ids).logits, model(ids).logits)  # eager: MatVec is the layer's own forward


@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8"])
def test_matvec_under_compile_equals_the_layer(kind):
    """Compiled, one row takes the reduction and several rows the layer's own product; both give the layer's
    numbers (to float rounding: the reduction adds in another order)."""
    torch._dynamo.reset()  # every case compiles MatVec.forward anew: keep under dynamo's recompile limit
    torch.manual_seed(0)
    linear = nn.Linear(96, 40, bias=False)
    layer = Int8Linear(linear) if kind == "int8" else linear.to(torch.bfloat16 if kind == "bf16" else torch.float32)
    dtype = torch.bfloat16 if kind == "bf16" else torch.float32
    matvec = MatVec(layer)
    compiled = torch.compile(matvec, fullgraph=True)
    tol = {"fp32": 1e-5, "bf16": 2e-2, "int8": 2e-2}[kind]
    with torch.no_grad():
        for shape in [(1, 1, 96), (3, 1, 96)]:
            x = torch.randn(shape).to(dtype)
            got, want = compiled(x), layer(x)
            assert got.shape == want.shape and got.dtype == want.dtype
            assert torch.allclose(got.float(), want.float(), atol=tol, rtol=tol)
    # a one-row reduction does not go through the layer's forward: a compiled call that does would show this
    calls = []
    layer.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        torch.compile(MatVec(layer), fullgraph=True)(torch.randn(1, 1, 96).to(dtype))
    assert calls == []


@pytest.mark.parametrize("kind", ["fp32", "int8", "int8-large", "int4"])
def test_batch_one_compiled_decode_equals_eager(kind, monkeypatch):
    """A single row decodes through the fused step (reductions, written-out attention, no freezing) and gives
    eager's greedy tokens, fp32 and int8; int4 layers run their own kernel inside the compiled step. int8-large:
    weights 15x the usual scale, where fp32 activations (rather than the eager kernel's bf16) changed the tokens.
    (On a CPU with minimind's kernels one row runs the native step instead, `tests/test_native.py`; this graph is
    what the other models and machines run.)"""
    from minimind.infer import engine
    from minimind.infer.generate import generate_tokens

    monkeypatch.setattr(engine, "native_step", lambda model: None)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tiny_model(hidden=64, num_attention_heads=4, num_key_value_heads=2).eval()
        if kind == "int8-large":
            with torch.no_grad():
                for p in model.parameters():
                    p.normal_(0, 0.3)
        model = {"fp32": lambda m: m, "int8": quantize_int8, "int8-large": quantize_int8,
                 "int4": quantize_int4}[kind](model)
        seed = 2 if kind == "int8-large" else 1  # a prompt where the two roundings of x part (measured)
        ids = torch.randint(3, 6400, (1, 9), generator=torch.Generator().manual_seed(seed))

        def decode(compile):
            return torch.stack(list(generate_tokens(model, ids, max_new_tokens=8, compile=compile)), 1)
        eager = decode(False)
        assert torch.equal(decode(True), eager)
        assert hasattr(model, "_minimind_compiled_step")
    finally:
        torch.set_num_threads(threads)


def test_a_model_changed_in_place_gets_a_new_step(monkeypatch):
    """The compiled step skips dynamo's guards on the model's modules (engine.compiled_step), so the engine itself
    must notice a model changed in place after a compiled decode (here: a new output head, then int8 layers): each
    next decode gives the changed model's tokens, not the old graph's."""
    import copy

    from minimind.infer import engine
    from minimind.infer.engine import compiled_step

    monkeypatch.setattr(engine, "native_step", lambda model: None)
    from minimind.infer.generate import generate_tokens

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tiny_model(hidden=64, num_attention_heads=4, num_key_value_heads=2).eval()
        ids = torch.randint(3, 6400, (1, 9), generator=torch.Generator().manual_seed(2))

        def decode(model, compile=True):
            return torch.stack(list(generate_tokens(model, ids, max_new_tokens=8, compile=compile)), 1)
        before = decode(model)
        first = compiled_step(model)
        assert compiled_step(model) is first  # unchanged model: the same step
        head = nn.Linear(64, 6400, bias=False)
        with torch.no_grad():
            head.weight.copy_(-model.lm_head.weight)  # the least likely token becomes the most likely
        model.lm_head = head
        flipped = decode(model)
        assert compiled_step(model) is not first
        assert torch.equal(flipped, decode(model, compile=False)) and not torch.equal(flipped, before)
        quantize_int8(model)
        assert torch.equal(decode(model), decode(copy.deepcopy(model)))  # as a fresh compile of the int8 model
    finally:
        torch.set_num_threads(threads)
