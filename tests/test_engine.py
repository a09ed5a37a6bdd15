"""The decode engine (`minimind.infer.engine.DecodeBatch`): rows that join a batch mid-decode (with prompts longer
and shorter than the batch's columns), rows and groups that leave, and every row still giving exactly the tokens it
gives alone, greedy, with a repetition penalty and sampled with a seed; the cache columns shrink as rows leave."""

import pytest
import torch
from helpers import varied

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.infer.engine import DecodeBatch, Group
from minimind.infer.generate import generate

VOCAB = 500


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            vocab_size=VOCAB, max_position_embeddings=256)
    m = varied(MiniMindForCausalLM(config).eval())
    return m


def prompt(n, seed):
    return torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def alone(model, row, n, **settings):
    """The n tokens `generate` gives this prompt alone."""
    out = generate(model, torch.tensor([row]), max_new_tokens=n, min_new_tokens=n, **settings)
    return out[0, len(row):].tolist()


class Driver:
    """A DecodeBatch plus the tokens each group has received, so far."""

    def __init__(self, model, **kw):
        self.batch, self.tokens = DecodeBatch(model, **kw), {}

    def add(self, rows, **settings):
        T = max(len(r) for r in rows)
        ids = torch.tensor([[0] * (T - len(r)) + r for r in rows])  # (b, T) left-padded
        mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
        group = Group(len(rows), **settings)
        first = self.batch.add(ids, mask, [group])
        self.tokens[id(group)] = [[t] for t in first.tolist()]
        return group

    def step(self, n=1):
        for _ in range(n):
            out = self.batch.step().tolist()
            for g in self.batch.groups:
                for i, t in enumerate(out[self.batch.span(g)]):
                    self.tokens[id(g)][i].append(t)

    def of(self, group):
        return self.tokens[id(group)]


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "recompute"])
def test_rows_joining_mid_decode_equal_each_alone(model, use_cache):
    a, b, c = prompt(5, 1), prompt(14, 2), prompt(2, 3)
    d = Driver(model, use_cache=use_cache)
    ga = d.add([a])
    d.step(3)  # 8 columns: b is longer (the batch gets padded), c shorter (c gets padded)
    gb = d.add([b], repetition_penalty=1.3)
    d.step(2)
    gc = d.add([c], do_sample=True, temperature=0.9, top_k=40, seed=7)
    d.step(6)
    assert d.of(ga)[0] == alone(model, a, 12)
    assert d.of(gb)[0] == alone(model, b, 9, repetition_penalty=1.3)
    assert d.of(gc)[0] == alone(model, c, 7, do_sample=True, temperature=0.9, top_k=40, seed=7)
    assert d.batch.rows == 3 and d.batch.columns == len(b) + 8


def test_groups_leaving_keep_the_others_exact_and_free_columns(model):
    a, b, c = prompt(6, 4), prompt(20, 5), prompt(3, 6)
    d = Driver(model)
    ga = d.add([a])
    gb = d.add([b, c], repetition_penalty=1.2)  # one group of two padded rows, joining at once
    d.step(2)
    assert d.batch.columns == 20 + 2 and d.batch.mask is not None
    d.batch.remove([gb])  # the longest rows leave: the columns only they used go with them
    assert d.batch.rows == 1 and d.batch.columns == 6 + 2 and d.batch.mask is None  # unpadded: the fast path
    d.step(5)
    assert d.of(ga)[0] == alone(model, a, 8)
    assert d.of(gb)[0] == alone(model, b, 3, repetition_penalty=1.2)
    assert d.of(gb)[1] == alone(model, c, 3, repetition_penalty=1.2)
    d.batch.remove([ga])
    assert d.batch.rows == 0 and d.batch.columns == 0 and d.batch.cache is None


def test_single_rows_leave_a_group(model):
    rows = [prompt(4, 7), prompt(9, 8), prompt(6, 9)]
    d = Driver(model)
    g = d.add(rows, repetition_penalty=1.3)
    d.step(2)
    d.batch.keep([0, 2])  # the middle (longest) row leaves its group
    assert g.rows == 2 and d.batch.columns == 6 + 2
    first, middle, last = d.of(g)
    d.tokens[id(g)] = [first, last]  # the group's rows now
    d.step(4)
    assert first == alone(model, rows[0], 7, repetition_penalty=1.3)
    assert middle == alone(model, rows[1], 3, repetition_penalty=1.3)  # its tokens up to leaving
    assert last == alone(model, rows[2], 7, repetition_penalty=1.3)
    with pytest.raises(ValueError, match="ascending"):
        d.batch.keep([1, 0])


def test_a_failed_prefill_leaves_the_batch_as_it_was(model):
    a = prompt(5, 10)
    d = Driver(model)
    ga = d.add([a])
    d.step(2)
    with pytest.raises(ValueError, match="top_p"):
        d.add([prompt(3, 11)], do_sample=True, top_p=2.0)
    with pytest.raises(ValueError, match="pad the batch on the left"):
        d.batch.add(torch.ones(1, 3, dtype=torch.long), torch.tensor([[1, 1, 0]]))
    assert d.batch.rows == 1 and d.batch.columns == 7
    d.step(3)
    assert d.of(ga)[0] == alone(model, a, 6)


def test_fixed_shape_step_equals_the_general_one(model, monkeypatch):
    """The step `compile=True` runs (cache written in place at a tensor column, the mask built from it over the whole
    preallocated cache) gives the general step's tokens: greedy and seeded sampling, a padded batch, and rows
    joining and leaving after it (the batch goes back to the general step). Run uncompiled here, so that this test is
    fast; test_generate.py compiles it."""
    import minimind.infer.engine as engine

    calls = []

    def counted(m):
        step = engine.decode_step(m)
        return lambda *args: calls.append(1) or step(*args)
    monkeypatch.setattr(engine, "compiled_forward", lambda m, **_: m)
    monkeypatch.setattr(engine, "compiled_step", counted)
    rows = [prompt(9, 1), prompt(4, 2)]
    T = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (T - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    for settings in ({}, {"do_sample": True, "temperature": 0.9, "top_k": 50, "seed": 3, "repetition_penalty": 1.3}):
        for am in (None, mask):
            general = generate(model, ids, am, max_new_tokens=12, min_new_tokens=12, **settings)
            calls.clear()
            fixed = generate(model, ids, am, max_new_tokens=12, min_new_tokens=12, compile=True, **settings)
            assert len(calls) == 11 and torch.equal(fixed, general)
    # joining and leaving: the batch drops the fixed-shape step and still gives each row its own tokens
    batch = DecodeBatch(model, compile=True)
    a = Group(2)
    first = batch.add(ids, mask, [a], capacity=40)
    assert batch.fixed_rows is not None and batch.cache.keys[0].shape[2] == engine.STEP_COLUMNS
    got = [first] + [batch.step() for _ in range(3)]
    assert batch.cache.lengths == [T + 3] * len(batch.cache.lengths)
    b = Group(1)
    got_b = [batch.add(torch.tensor([prompt(6, 3)]), None, [b])]
    assert batch.fixed_rows is None
    for _ in range(4):
        out = batch.step()
        got.append(out[:2])
        got_b.append(out[2:])
    assert torch.stack(got, 1).tolist() == [alone(model, r, 8) for r in rows]
    assert torch.cat(got_b).tolist() == alone(model, prompt(6, 3), 5)


def test_a_deep_copy_compiles_its_own_step(model):
    """`copy.deepcopy` of a model carries its attributes; the compiled functions kept on it must not follow, or the
    copy (e.g. cast to bf16 or quantized) would run the original's frozen weights."""
    import copy

    import minimind.infer.engine as engine

    step, forward = engine.compiled_step(model), engine.compiled_forward(model)
    twin = copy.deepcopy(model)
    assert engine.compiled_step(model) is step and engine.compiled_forward(model) is forward
    assert engine.compiled_step(twin) is not step and engine.compiled_forward(twin) is not forward
