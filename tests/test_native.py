"""The whole batch-1 decode step as one C++ call (`minimind.kernels.native`, `csrc/decode.cpp`): its logits and cache
writes against the model's own forward, fp32, bf16 and int8, with and without q/k norms, a padded row; the engine
using it; the models it refuses, and its errors."""

import pytest
import torch
from torch import nn

from minimind.kernels.matvec import use_row_kernels
from minimind.kernels.native import native_problem, native_step
from minimind.kv_cache import KVCache
from minimind.quantize import quantize_int4, quantize_int8

from helpers import tiny_model

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


@pytest.mark.parametrize("kind,kv_heads", [("fp32", 1), ("fp32", 2), ("fp32", 4), ("int4", 1), ("int4", 2)])
def test_thread_counts_that_divide_the_key_value_heads_or_not(kind, kv_heads):
    """Threads that divide the key/value heads own whole groups (q, k, v rows to attention, no barrier between);
    otherwise the rows are shared evenly with barriers (int4: in blocks of 64 rows). Both give the same logits and
    cache writes, the model's up to the order of sums (int4: up to eager's bf16 x)."""
    model = model_of(kind, kv_heads=kv_heads)
    tolerance = {"fp32": 1e-5, "int4": 1e-2}[kind]
    ids = torch.randint(3, 6400, (1, 12), generator=torch.Generator().manual_seed(5))
    want, _, theirs = next_logits(model, ids)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            cache = next_logits(model, ids)[1]
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


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_compiled_batch_one_decoding_runs_it_and_gives_eagers_tokens(kind, monkeypatch):
    from minimind.infer import engine
    from minimind.infer.generate import generate_tokens

    model = model_of(kind)
    ids = torch.randint(3, 6400, (1, 9), generator=torch.Generator().manual_seed(1))

    def decode(compile):
        return torch.stack(list(generate_tokens(model, ids, max_new_tokens=12, compile=compile)), 1)
    eager = decode(False)
    calls = []

    def counted(model):
        step = native_step(model)

        def counting(*args):
            calls.append(1)
            return step(*args)
        return counting
    monkeypatch.setattr(engine, "native_step", counted)
    monkeypatch.setattr(engine, "compiled_forward", lambda model, **_: model)  # the prefill uncompiled: a faster test

    def no_graph(model):
        def step(*args):
            raise AssertionError("one row on a CPU ran the compiled graph, not the native step")
        return step
    monkeypatch.setattr(engine, "compiled_step", no_graph)
    assert torch.equal(decode(True), eager)
    assert len(calls) == 11  # every step after the prefill's first token


def test_models_it_does_not_take():
    from minimind.lora import apply_lora

    assert "mixture-of-experts" in native_problem(tiny_model(use_moe=True))
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
