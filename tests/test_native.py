"""The whole batch-1 decode step as one C++ call (`minimind.kernels.native`, `csrc/decode.cpp`): its logits and cache
writes against the model's own forward, fp32, bf16, int8 and int4, with and without q/k norms, a padded row,
mixture-of-experts models with both routers; the engine using it by default (and with compile=True) with the eager
path's tokens, for a row alone in a batch that others join and leave; the models it refuses, and its errors."""

import copy

import pytest
import torch
from helpers import tiny_model
from torch import nn

from minimind.infer.engine import DecodeBatch, Group, eval_mode
from minimind.kernels.matvec import use_row_kernels
from minimind.kernels.native import native_problem, native_step
from minimind.kv_cache import KVCache
from minimind.quantize import quantize_int4, quantize_int8

native = native_step(tiny_model())
pytestmark = pytest.mark.skipif(native is None, reason=f"no native decode step here: {native_problem(tiny_model())}")
CAPACITY = 48


def model_of(kind: str, qk_norm: bool = False, kv_heads: int = 2):
    if kind == "int4":  # the step reads int4 rows 64 at a time: every layer's outputs a multiple of 64
        return quantize_int4(tiny_model(hidden=128, num_attention_heads=2, num_key_value_heads=kv_heads,
                                        intermediate_size=192, qk_norm=qk_norm).eval())
    model = tiny_model(hidden=64, num_attention_heads=4, num_key_value_heads=kv_heads, intermediate_size=96,
                       qk_norm=qk_norm).eval()
    if kind == "bf16":
        return model.to(torch.bfloat16)
    # int8: the row product the engine decodes with (DecodeBatch installs it), which the native step shares
    return use_row_kernels(quantize_int8(model)) if kind == "int8" else model


def next_logits(model, ids, mask=None):
    """The model's own forward: prefill ids[:, :-1] into a cache, then the last token. Returns (logits (V,), cache
    after the prefill only, for the native step to continue)."""
    T = ids.shape[1] - 1
    positions = None if mask is None else (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        ours = KVCache(model.config.num_hidden_layers, capacity=CAPACITY)
        model(ids[:, :T], attention_mask=None if mask is None else mask[:, :T],
              position_ids=None if mask is None else positions[:, :T], cache=ours, use_cache=True)
        theirs = KVCache(model.config.num_hidden_layers, capacity=CAPACITY)
        model(ids[:, :T], attention_mask=None if mask is None else mask[:, :T],
              position_ids=None if mask is None else positions[:, :T], cache=theirs, use_cache=True)
        logits = model(ids[:, T:], attention_mask=mask, position_ids=None if mask is None else positions[:, T:],
                       cache=theirs, use_cache=True).logits[0, -1].float()
    return logits, ours, theirs


@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8", "int4"])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_the_step_equals_the_models_forward(kind, qk_norm):
    model = model_of(kind, qk_norm)
    ids = torch.randint(3, 6400, (1, 12), generator=torch.Generator().manual_seed(3))
    want, cache, theirs = next_logits(model, ids)
    step = native_step(model)
    seen = torch.ones(CAPACITY, dtype=torch.bool)
    got = step(int(ids[0, -1]), 11, 11, seen, cache.keys, cache.values)
    assert got.shape == (1, 6400) and got.dtype == torch.float32
    # fp32: the same arithmetic up to the order of sums; int8: the same products; bf16: fp32 activations where the
    # eager forward rounds them to bf16 between operations; int4: the same weights, x in fp32 where eager's is bf16
    tolerance = {"fp32": 1e-5, "int8": 2e-3, "bf16": 3e-2, "int4": 1e-2}[kind]
    assert (got[0] - want).abs().max() <= tolerance * want.abs().max(), (got[0] - want).abs().max()
    assert int(got.argmax()) == int(want.argmax())
    for layer in range(model.config.num_hidden_layers):  # this step's key and value written at column 11
        for mine, eager in ((cache.keys[layer], theirs.keys[layer]), (cache.values[layer], theirs.values[layer])):
            written = mine[:, :, 11].float()
            assert (written - eager[:, :, 11].float()).abs().max() <= 2 * tolerance * eager.float().abs().max()
            assert mine[:, :, 12:].abs().sum() == 0  # and nothing past it


@pytest.mark.parametrize("kind", ["fp32", "bf16"])
@pytest.mark.parametrize("hidden,heads", [(32, 4), (48, 2), (96, 1)])
def test_head_sizes_off_the_vector_width(kind, hidden, heads):
    """Heads of 8, 24 and 96 values: attention's vector loops (16 values at a time, up to 64 held) and their tails."""
    model = tiny_model(hidden=hidden, num_attention_heads=heads, num_key_value_heads=1, intermediate_size=64).eval()
    model = model.to(torch.bfloat16) if kind == "bf16" else model
    ids = torch.randint(3, 6400, (1, 12), generator=torch.Generator().manual_seed(3))
    want, cache, _ = next_logits(model, ids)
    got = native_step(model)(int(ids[0, -1]), 11, 11, torch.ones(CAPACITY, dtype=torch.bool), cache.keys,
                             cache.values)[0]
    assert (got - want).abs().max() <= {"fp32": 1e-5, "bf16": 3e-2}[kind] * want.abs().max()


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("kind,kv_heads", [("fp32", 1), ("fp32", 2), ("fp32", 4), ("int4", 1), ("int4", 2)])
def test_thread_counts_that_divide_the_key_value_heads_or_not(kind, kv_heads, qk_norm):
    """Threads that divide the key/value heads own whole groups (q, k, v rows to attention, no barrier between; a
    thread with several groups, their q/k norms between their products); otherwise the rows are shared evenly with
    barriers (int4: in blocks of 64 rows). Both give the same logits and cache writes, the model's up to the order of
    sums (int4: up to eager's bf16 x)."""
    model = model_of(kind, qk_norm, kv_heads=kv_heads)
    tolerance = {"fp32": 1e-5, "int4": 1e-2}[kind]
    ids = torch.randint(3, 6400, (1, 12), generator=torch.Generator().manual_seed(5))
    want, prefilled, theirs = next_logits(model, ids)  # one prefill for all: PyTorch's sums may vary with threads
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            cache = copy.deepcopy(prefilled)
            got = native_step(model)(int(ids[0, -1]), 11, 11, torch.ones(CAPACITY, dtype=torch.bool), cache.keys,
                                     cache.values)[0]
            assert (got - want).abs().max() <= tolerance * want.abs().max(), (n, (got - want).abs().max())
            for mine, eager in zip(cache.keys + cache.values, theirs.keys + theirs.values):
                assert (mine[:, :, 11] - eager[:, :, 11]).abs().max() <= tolerance * eager.abs().max()
            if n == 1:
                first = got
            assert torch.equal(got, first)  # each row and head summed by one thread, in one order
    finally:
        torch.set_num_threads(threads)


def test_a_padded_row_and_a_position_behind_its_column():
    """A left-padded prompt: its padding columns are not attended, and RoPE counts positions from its first real
    token, so the step's position is behind its cache column."""
    model = model_of("fp32")
    ids = torch.randint(3, 6400, (1, 12), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(1, 12, dtype=torch.long)
    mask[0, :4] = 0
    want, cache, _ = next_logits(model, ids, mask)
    seen = torch.ones(CAPACITY, dtype=torch.bool)
    seen[:4] = False
    got = native_step(model)(int(ids[0, -1]), 7, 11, seen, cache.keys, cache.values)[0]
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    unpadded, _, _ = next_logits(model, ids[:, 4:])  # and it is the unpadded prompt's answer
    assert (got - unpadded).abs().max() <= 1e-5 * unpadded.abs().max()


def eager_tokens(model, ids, n, mask=None):
    """The n greedy tokens of the eager path: the engine with every step through the model's forward."""
    batch = DecodeBatch(model, native=False)
    with eval_mode(model):
        return torch.stack([batch.add(ids, mask, capacity=ids.shape[1] + n)] + [batch.step() for _ in range(n - 1)], 1)


def counted_native(monkeypatch) -> list:
    """Count the native step's calls in the engine (on models whose step is built after this)."""
    from minimind.infer import engine

    calls = []

    def counted(model):
        step = native_step(model)
        return None if step is None else lambda *args: calls.append(1) or step(*args)
    monkeypatch.setattr(engine, "native_step", counted)
    return calls


DEFAULT_KINDS = ["fp32", "int8", "bf16", "int4", "moe-fp32", "moe-int8", "moe-bf16", "moe-int4"]


@pytest.mark.parametrize("kind", DEFAULT_KINDS)
def test_default_decoding_runs_it_and_gives_eagers_tokens(kind, monkeypatch):
    """`generate` with no flags, one row on a CPU: the eager prefill, then every step through the native op, with no
    torch.compile anywhere; the greedy tokens are the eager path's, dense and mixture-of-experts. (bf16 and int4 keep
    fp32 activations where eager rounds them to bf16, which could part the two at a near-tie: not on this model.)"""
    from minimind.infer.generate import generate

    model = moe_model(kind[4:]) if kind.startswith("moe-") else model_of(kind)
    ids = torch.randint(3, 6400, (1, 9), generator=torch.Generator().manual_seed(1))
    want = eager_tokens(model, ids, 12)
    calls = counted_native(monkeypatch)

    def no_compile(*args, **kwargs):
        raise AssertionError("the default path compiled something")
    monkeypatch.setattr(torch, "compile", no_compile)
    got = generate(model, ids, max_new_tokens=12)[:, 9:]
    assert torch.equal(got, want)
    assert len(calls) == 11  # every step after the prefill's first token


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_compiled_batch_one_decoding_runs_it_and_gives_eagers_tokens(kind, monkeypatch):
    from minimind.infer import engine
    from minimind.infer.generate import generate_tokens

    model = model_of(kind)
    ids = torch.randint(3, 6400, (1, 9), generator=torch.Generator().manual_seed(1))
    eager = eager_tokens(model, ids, 12)
    calls = counted_native(monkeypatch)
    monkeypatch.setattr(engine, "compiled_forward", lambda model, **_: model)  # the prefill uncompiled: a faster test

    def no_graph(model):
        def step(*args):
            raise AssertionError("one row on a CPU ran the compiled graph, not the native step")
        return step
    monkeypatch.setattr(engine, "compiled_step", no_graph)
    assert torch.equal(torch.stack(list(generate_tokens(model, ids, max_new_tokens=12, compile=True)), 1), eager)
    assert len(calls) == 11


def test_a_row_alone_in_a_batch_that_rows_join_and_leave(monkeypatch):
    """The server's batch (no preallocated cache): a row alone steps natively, its cache grown as it goes; a second
    row joins (the batch steps through the model's forward), leaves, and the row goes on natively over a cache cut to
    its columns. Its tokens are its own eager ones throughout."""
    model = model_of("fp32")
    calls = counted_native(monkeypatch)
    a = torch.randint(3, 6400, (1, 5), generator=torch.Generator().manual_seed(2))
    b = torch.randint(3, 6400, (1, 9), generator=torch.Generator().manual_seed(3))
    batch, ga, gb = DecodeBatch(model), Group(1), Group(1)
    with eval_mode(model):
        got = [batch.add(a, None, [ga])]
        got += [batch.step() for _ in range(3)]
        assert len(calls) == 3 and batch.cache.keys[0].shape[2] >= 8
        got_b = [batch.add(b, None, [gb])]
        for _ in range(2):
            both = batch.step()
            got.append(both[:1])
            got_b.append(both[1:])
        assert len(calls) == 3  # two rows: the model's forward
        batch.remove([gb])
        assert batch.cache.keys[0].shape[2] == batch.columns == 5 + 5  # b's padding columns went with it
        got += [batch.step() for _ in range(6)]
    assert len(calls) == 3 + 6
    assert torch.cat(got).tolist() == eager_tokens(model, a, 12)[0].tolist()
    assert torch.cat(got_b).tolist() == eager_tokens(model, b, 3)[0].tolist()


def test_a_padded_row_decodes_as_its_unpadded_prompt(monkeypatch):
    from minimind.infer.generate import generate

    model = model_of("fp32")
    calls = counted_native(monkeypatch)
    ids = torch.randint(3, 6400, (1, 12), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    got = generate(model, ids, mask, max_new_tokens=10)[:, 12:]
    assert len(calls) == 9 and torch.equal(got, eager_tokens(model, ids[:, 4:], 10))


def test_models_it_does_not_take_decode_eagerly_by_default():
    """A model the native step does not take (here an unmerged LoRA adapter) decodes through the model's forward,
    silently, with the eager path's tokens."""
    from minimind.infer.generate import generate
    from minimind.lora import apply_lora

    model = model_of("fp32")
    apply_lora(model, rank=2)
    ids = torch.randint(3, 6400, (1, 9), generator=torch.Generator().manual_seed(1))
    assert torch.equal(generate(model, ids, max_new_tokens=8)[:, 9:], eager_tokens(model, ids, 8))
    assert model._minimind_native_step[1] is None


def test_a_bf16_models_norms_changed_in_place_are_seen():
    """A bf16 model's norms reach the step as fp32 copies: a change to the model's own (a training step between two
    decodes) reaches the copies at the next step."""
    model = model_of("bf16")
    step = native_step(model)
    with torch.no_grad():
        for block in model.model.layers:
            block.post_attention_layernorm.weight.mul_(3)
        model.model.norm.weight.normal_()
    ids = torch.randint(3, 6400, (1, 12), generator=torch.Generator().manual_seed(3))
    want, cache, _ = next_logits(model, ids)
    got = step(int(ids[0, -1]), 11, 11, torch.ones(CAPACITY, dtype=torch.bool), cache.keys, cache.values)[0]
    assert (got - want).abs().max() <= 3e-2 * want.abs().max()


def moe_model(kind: str, router: str = "minimind2"):
    """A mixture-of-experts model: MiniMind 2's router (top 2 of 4 experts, renormalized, a shared expert) or
    MiniMind-3's (top 1, no shared expert); int4: every layer's outputs a multiple of 64."""
    fields = dict(use_moe=True, n_routed_experts=4, moe_router=router, num_experts_per_tok=2 if router == "minimind2"
                  else 1, n_shared_experts=1 if router == "minimind2" else 0)
    if kind == "int4":
        return quantize_int4(tiny_model(hidden=128, num_attention_heads=2, num_key_value_heads=1,
                                        intermediate_size=192, moe_intermediate_size=128, **fields).eval())
    model = tiny_model(hidden=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                       moe_intermediate_size=64, **fields).eval()
    if kind == "bf16":
        return model.to(torch.bfloat16)
    return use_row_kernels(quantize_int8(model)) if kind == "int8" else model


@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8", "int4"])
@pytest.mark.parametrize("router", ["minimind2", "minimind3"])
def test_a_mixture_of_experts_step_equals_the_models_forward(kind, router):
    """The step routes the row as `MoEFeedForward` does (softmax, top k, renormalized weights; the shared experts
    added) and runs the chosen experts' products: the model's logits and cache writes, at 1 to 3 threads."""
    model = moe_model(kind, router)
    ids = torch.randint(3, 6400, (1, 12), generator=torch.Generator().manual_seed(6))
    want, _, theirs = next_logits(model, ids)
    tolerance = {"fp32": 1e-5, "int8": 2e-3, "bf16": 3e-2, "int4": 1e-2}[kind]
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            cache = next_logits(model, ids)[1]
            got = native_step(model)(int(ids[0, -1]), 11, 11, torch.ones(CAPACITY, dtype=torch.bool), cache.keys,
                                     cache.values)[0]
            assert (got - want).abs().max() <= tolerance * want.abs().max(), (n, (got - want).abs().max())
            assert int(got.argmax()) == int(want.argmax())
            for mine, eager in zip(cache.keys + cache.values, theirs.keys + theirs.values):
                assert (mine[:, :, 11] - eager[:, :, 11]).float().abs().max() <= \
                    2 * tolerance * eager.float().abs().max()
    finally:
        torch.set_num_threads(threads)


def test_the_router_picks_what_the_model_picks():
    """Experts that differ in their output scale and a router that picks expert 3, then expert 1, with weights of
    about 0.7 and 0.3 (the others ~e^-7 behind): the step's logits are the model's, so a wrong expert or a wrong
    weight would show."""
    model = moe_model("fp32")
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0].abs_().add_(1)  # the normed hidden state's x[0] ~ 8, the rest ~ 0
        for block in model.model.layers:
            block.mlp.gate.weight.zero_()
            block.mlp.gate.weight[3, 0], block.mlp.gate.weight[1, 0] = 1.0, 0.9
            for i, expert in enumerate(block.mlp.experts):
                expert.down_proj.weight.mul_(10 * (i + 1))
    ids = torch.randint(3, 6400, (1, 12), generator=torch.Generator().manual_seed(7))
    want, cache, _ = next_logits(model, ids)
    got = native_step(model)(int(ids[0, -1]), 11, 11, torch.ones(CAPACITY, dtype=torch.bool), cache.keys,
                             cache.values)[0]
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_models_it_does_not_take():
    from minimind.lora import apply_lora

    assert native_problem(tiny_model(use_moe=True)) is None  # routed in the step
    int4 = quantize_int4(tiny_model(hidden=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96))
    assert native_problem(int4) == "model.layers.0.self_attn.k_proj: an int4 layer of 32 outputs (the step reads " \
                                   "int4 rows 64 at a time)"
    assert native_step(int4) is None
    lora = tiny_model()
    apply_lora(lora, rank=2)
    assert "LoRALinear" in native_problem(lora)
    biased = tiny_model()
    biased.lm_head = nn.Linear(32, 6400, bias=True)
    assert native_problem(biased) == "lm_head: a linear layer with a bias"
    half = tiny_model().to(torch.float16)
    assert "torch.float16 weights" in native_problem(half)


def test_bad_arguments_are_refused_with_what_is_wrong():
    model = model_of("fp32")
    step = native_step(model)
    cache = KVCache(model.config.num_hidden_layers, capacity=CAPACITY)
    with torch.inference_mode():
        model(torch.tensor([[5, 6, 7]]), cache=cache, use_cache=True)
    seen = torch.ones(CAPACITY, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="token 6400 is outside the vocabulary"):
        step(6400, 3, 3, seen, cache.keys, cache.values)
    with pytest.raises(RuntimeError, match=f"column {CAPACITY} outside the cache"):
        step(5, 3, CAPACITY, seen, cache.keys, cache.values)
    with pytest.raises(RuntimeError, match="`seen` must be 48 contiguous booleans"):
        step(5, 3, 3, seen[:10], cache.keys, cache.values)
    with pytest.raises(RuntimeError, match="one key and one value buffer per layer"):
        step(5, 3, 3, seen, cache.keys, cache.values[:1])
    with pytest.raises(RuntimeError, match="position 128 outside the RoPE tables"):
        step(5, 128, 3, seen, cache.keys, cache.values)


def test_building_it_moves_the_weights_and_keeps_them_whole(tmp_path):
    """`native_step` moves the products' weights into huge pages (`into_huge_pages`): the same values, the same
    parameter objects (a tied head stays tied), a storage each, so that saving and loading the model still works."""
    from minimind.model import MiniMindForCausalLM

    model = model_of("fp32")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    native_step(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    parameters = list(model.parameters())
    assert len({p.untyped_storage().data_ptr() for p in parameters}) == len(parameters)
    model.save_pretrained(tmp_path)
    loaded = MiniMindForCausalLM.from_pretrained(tmp_path)
    assert loaded.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in loaded.state_dict().items())
