"""The model against Hugging Face Llama, its KV cache against the full forward, and the MoE layer
against a naive per-token reference."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

from minimind import KVCache, MiniMindConfig, MiniMindForCausalLM, preset
from minimind.export.hf import llama_config
from minimind.kernels import attention
from minimind.kernels.attention import FLASH_CPU, CausalAttention, use_hand_backward
from minimind.model import MiniMindModel, MoEFeedForward, rope_frequencies

needs_flash_cpu = pytest.mark.skipif(not FLASH_CPU, reason="this torch lacks aten._scaled_dot_product_flash_attention_"
                                     "for_cpu, the private op CausalAttention's forward calls")


def tiny(**overrides):
    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                vocab_size=300, max_position_embeddings=4096)
    return MiniMindConfig(**{**base, **overrides})


def moe(**overrides):
    base = dict(use_moe=True, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1)
    return tiny(**{**base, **overrides})


def left_padded(batch=3, T=24, vocab=300):
    ids = torch.randint(3, vocab, (batch, T))
    mask = torch.ones(batch, T, dtype=torch.long)
    for b in range(1, batch):
        mask[b, : 5 * b] = 0
        ids[b, : 5 * b] = 0
    return ids, mask


# --- Hugging Face Llama parity ---------------------------------------------------------------------

@pytest.mark.parametrize("yarn", [False, True])
def test_logits_match_llama(yarn):
    config = tiny(inference_rope_scaling=yarn)
    ours = MiniMindForCausalLM(config).eval()
    llama = LlamaForCausalLM(llama_config(config)).eval()
    llama.load_state_dict(ours.state_dict(), strict=True)
    ids = torch.randint(0, config.vocab_size, (2, 48))
    with torch.no_grad():
        a, b = ours(ids).logits, llama(ids).logits
    assert (a - b).abs().max() < 1e-4

    ids, mask = left_padded()
    with torch.no_grad():
        a = ours(ids, attention_mask=mask).logits
        b = llama(ids, attention_mask=mask).logits
    keep = mask.bool()
    assert (a[keep] - b[keep]).abs().max() < 1e-4


def test_yarn_changes_the_rotation():
    plain, yarn = tiny(), tiny(inference_rope_scaling=True)
    assert yarn.rope_scaling["factor"] == 16 and plain.rope_scaling is None
    f_plain, _ = rope_frequencies(plain.head_dim, plain.rope_theta, plain.rope_scaling)
    f_yarn, _ = rope_frequencies(yarn.head_dim, yarn.rope_theta, yarn.rope_scaling)
    assert torch.equal(f_plain[:2], f_yarn[:2])  # high-frequency dimensions are kept
    assert torch.allclose(f_plain[-1] / 16, f_yarn[-1])  # low-frequency dimensions are interpolated
    m1, m2 = MiniMindModel(plain), MiniMindModel(yarn)
    assert not torch.allclose(m1.freqs_cos[1000], m2.freqs_cos[1000])
    # MiniMind's rule: no YaRN when the context does not exceed the original 2048.
    assert tiny(inference_rope_scaling=True, max_position_embeddings=2048).rope_scaling is None


def test_explicit_attention_matches_sdpa():
    torch.manual_seed(0)
    fast = MiniMindForCausalLM(tiny()).eval()
    slow = MiniMindForCausalLM(tiny(flash_attn=False)).eval()
    slow.load_state_dict(fast.state_dict())
    ids, mask = left_padded()
    with torch.no_grad():
        assert (fast(ids).logits - slow(ids).logits).abs().max() < 1e-5
        a, b = fast(ids, attention_mask=mask).logits, slow(ids, attention_mask=mask).logits
    assert (a[mask.bool()] - b[mask.bool()]).abs().max() < 1e-5


def attention_grads(attend, q, k, v, dy):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    y = attend(q, k, v)
    y.backward(dy)
    return [y.detach().float()] + [t.grad.float() for t in (q, k, v)]


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])


@needs_flash_cpu
@pytest.mark.parametrize("heads", [(4, 2), (4, 4), (6, 1)])
def test_hand_backward_attention_matches_sdpa(heads):
    H, Hkv = heads
    torch.manual_seed(0)
    q, k, v, dy = (torch.randn(2, h, 24, 16) for h in (H, Hkv, Hkv, H))
    q = q.transpose(1, 2).contiguous().transpose(1, 2)  # (B, T, H, D) in memory, as the projections leave it
    for ours, ref, name in zip(attention_grads(CausalAttention.apply, q, k, v, dy), attention_grads(sdpa, q, k, v, dy),
                               ["y", "dq", "dk", "dv"]):
        assert (ours - ref).abs().max() < 1e-5, name
    # bf16: within a few bf16 roundings (2^-8 relative) of float32's result, as SDPA's own bf16 backward
    low = [t.bfloat16() for t in (q, k, v, dy)]
    for ours, ref, name in zip(attention_grads(CausalAttention.apply, *low), attention_grads(sdpa, q, k, v, dy),
                               ["y", "dq", "dk", "dv"]):
        assert (ours - ref).abs().max() <= 0.02 * ref.abs().max(), name


@needs_flash_cpu
def test_hand_backward_only_for_compiled_bf16_cpu_training_at_small_sizes():
    q = torch.randn(8, 8, 256, 64, dtype=torch.bfloat16, requires_grad=True)
    fits = dict(is_causal=True, mask=None, cache=None, dropout=0.0)
    assert not use_hand_backward(q, **fits)  # eager: SDPA's backward, unfused ours is no faster
    calls = []

    @torch.compile(backend="eager", fullgraph=True)
    def probe(q, **kw):
        calls.append(use_hand_backward(q, **kw))
        return q

    probe(q, **fits)
    probe(q.detach(), **fits)  # no gradient: inference
    probe(q.float().detach().requires_grad_(), **fits)  # float32: SDPA's backward is the faster there
    probe(torch.randn(8, 8, 512, 64, dtype=torch.bfloat16, requires_grad=True), **fits)  # beyond 2^22 scores
    probe(q, **{**fits, "is_causal": False})
    probe(q, **{**fits, "dropout": 0.1})
    assert calls == [True, False, False, False, False, False]


def test_no_hand_backward_where_torch_lacks_the_cpu_flash_kernel(monkeypatch):
    """Where the private op is gone, compiled bf16 training that would take CausalAttention gets SDPA instead."""
    monkeypatch.setattr(attention, "FLASH_CPU", False)
    q = torch.randn(2, 4, 16, 16, dtype=torch.bfloat16, requires_grad=True)
    calls = []

    @torch.compile(backend="eager", fullgraph=True)
    def probe(q):
        calls.append(use_hand_backward(q, is_causal=True, mask=None, cache=None, dropout=0.0))
        return q

    probe(q)
    assert calls == [False]


# --- KV cache ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [tiny, moe], ids=["dense", "moe"])
@pytest.mark.parametrize("padded", [False, True])
def test_incremental_decoding_equals_full_forward(make, padded):
    torch.manual_seed(0)
    model = MiniMindForCausalLM(make()).eval()
    if padded:
        ids, mask = left_padded(T=20)
    else:
        ids, mask = torch.randint(3, 300, (2, 20)), None
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        prompt = 6 if not padded else 12  # every row has at least one real token in the prompt
        out = model(ids[:, :prompt], attention_mask=None if mask is None else mask[:, :prompt], use_cache=True)
        steps = [out.logits]
        cache = out.past_key_values
        for t in range(prompt, ids.shape[1]):
            out = model(ids[:, t:t + 1], attention_mask=None if mask is None else mask[:, :t + 1],
                        past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits)
    inc = torch.cat(steps, dim=1)
    keep = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    assert (inc - full)[keep].abs().max() < 1e-4
    assert cache.get_seq_length() == ids.shape[1]


def test_chunked_prefill_and_legacy_tuples():
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny()).eval()
    ids = torch.randint(3, 300, (2, 30))
    with torch.no_grad():
        full = model(ids).logits
        first = model(ids[:, :10], use_cache=True)
        legacy = first.past_key_values.to_legacy()  # MiniMind-style list of (k, v)
        second = model(ids[:, 10:], past_key_values=legacy, use_cache=True)
    assert (torch.cat([first.logits, second.logits], 1) - full).abs().max() < 1e-4


def test_cache_under_both_names(recwarn):
    """The seed's `past_key_values=` / `.past_key_values` and transformers 5.24's `cache=` / `.cache` are one cache,
    read and written under either name, attribute or key, without a warning."""
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny()).eval()
    ids = torch.randint(3, 300, (1, 12))
    with torch.no_grad():
        full = model(ids).logits
        first = model(ids[:, :8], use_cache=True)
        assert first.past_key_values is first.cache and first.cache.get_seq_length() == 8
        assert "cache" in first and "past_key_values" in first and first["past_key_values"] is first["cache"]
        assert first.get("past_key_values") is first.cache and "loss" not in first and first.get("loss") is None
        second = model(ids[:, 8:10], past_key_values=first.past_key_values, use_cache=True)
        third = model(ids[:, 10:], cache=second.cache, use_cache=True)
        with pytest.raises(ValueError, match="cache= or as past_key_values="):
            model(ids[:, 10:], cache=second.cache, past_key_values=KVCache(2), use_cache=True)
    assert third.past_key_values.get_seq_length() == 12
    assert (torch.cat([first.logits, second.logits, third.logits], 1) - full).abs().max() < 1e-4
    assert torch.equal(first[1], first.logits) and len(first.to_tuple()) == 4  # aux_loss, logits, cache, hidden
    assert not [w for w in recwarn if "cache" in str(w.message)]


def test_cache_grows_without_losing_entries():
    cache = KVCache(num_layers=1)
    chunks = [torch.randn(1, 2, n, 4) for n in (3, 20, 1, 50)]
    for c in chunks:
        k, v = cache.update(c, -c, 0)
    assert torch.equal(k, torch.cat(chunks, dim=2)) and torch.equal(v, -torch.cat(chunks, dim=2))


def test_cache_cat_left_pads_and_select_keeps_rows_and_columns():
    a, b = KVCache(num_layers=1), KVCache(num_layers=1)
    ka, kb = torch.randn(1, 2, 3, 4), torch.randn(2, 2, 5, 4)
    a.update(ka, -ka, 0)
    b.update(kb, -kb, 0)
    both = KVCache.cat([a, b])
    k, v = both[0]
    assert k.shape == (3, 2, 5, 4) and both.get_seq_length() == 5
    assert torch.equal(k[:1, :, 2:], ka) and not k[:1, :, :2].any() and torch.equal(k[1:], kb)
    assert torch.equal(v, -k)
    both.select(torch.tensor([0, 2]), start=2)  # rows 0 and 2, columns 2..4
    k, v = both[0]
    assert torch.equal(k, torch.cat([ka, kb[1:, :, 2:]])) and torch.equal(v, -k) and both.get_seq_length() == 3
    step = torch.randn(2, 2, 1, 4)
    k, _ = both.update(step, step, 0)  # grows as before
    assert k.shape == (2, 2, 4, 4) and torch.equal(k[:, :, -1:], step)


def test_joined_caches_decode_each_row_as_alone():
    """Two prompts prefilled apart, then one decode step over their caches joined (the shorter left-padded, masked
    out): each row's logits equal its own."""
    model = MiniMindForCausalLM(tiny()).eval()
    prompts = [torch.randint(3, 300, (1, 4)), torch.randint(3, 300, (1, 9))]
    nxt = torch.tensor([[5], [7]])
    with torch.no_grad():
        caches = [model(p, use_cache=True).past_key_values for p in prompts]
        alone = [model(nxt[i:i + 1], past_key_values=c, use_cache=True).logits[:, -1] for i, c in enumerate(caches)]
        caches = [model(p, use_cache=True).past_key_values for p in prompts]
        mask = torch.tensor([[0] * 5 + [1] * 5, [1] * 10])  # (B, 9 + 1): the first prompt padded by 5
        joined = model(nxt, attention_mask=mask, position_ids=torch.tensor([[4], [9]]),
                       past_key_values=KVCache.cat(caches), use_cache=True).logits[:, -1]
    assert (joined - torch.cat(alone)).abs().max() < 1e-5


def test_attention_mask_of_wrong_length_is_a_clear_error():
    model = MiniMindForCausalLM(tiny()).eval()
    with pytest.raises(ValueError, match="attention_mask covers"):
        model(torch.zeros(1, 5, dtype=torch.long), attention_mask=torch.ones(1, 4))


# --- MoE ---------------------------------------------------------------------------------------------

def naive_moe(layer: MoEFeedForward, x):
    """One token at a time: softmax, top-k, optional renormalisation, weighted experts, shared experts."""
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            h = x[b, t]
            probs = F.softmax(layer.gate.weight @ h, dim=-1)
            w, idx = probs.topk(layer.top_k)
            if layer.top_k > 1 and layer.norm_topk_prob:
                w = w / w.sum()
            y = sum(wi * layer.experts[i](h[None])[0] for wi, i in zip(w, idx.tolist()))
            for s in layer.shared_experts:
                y = y + s(h[None])[0]
            out[b, t] = y
    return out


@pytest.mark.parametrize("norm_topk_prob", [True, False])
@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_moe_dispatch_equals_per_token_reference(norm_topk_prob, top_k):
    torch.manual_seed(0)
    layer = MoEFeedForward(moe(num_experts_per_tok=top_k, norm_topk_prob=norm_topk_prob, n_shared_experts=2))
    for p in layer.parameters():  # default init is small; make routing and experts matter
        torch.nn.init.normal_(p, std=0.3)
    layer.eval()
    x = torch.randn(2, 7, 64)
    y, aux = layer(x)
    ref = naive_moe(layer, x)
    assert (y - ref).abs().max() < 1e-5 * ref.abs().max()
    assert aux.item() == 0.0  # no balancing loss outside training


def test_moe_gradients_reach_every_expert():
    torch.manual_seed(0)
    model = MiniMindForCausalLM(moe()).train()
    ids = torch.randint(0, 300, (4, 32))
    out = model(ids, labels=ids)
    (out.loss + out.aux_loss).backward()
    for layer in model.model.layers:
        for expert in list(layer.mlp.experts) + list(layer.mlp.shared_experts):
            for p in expert.parameters():
                assert p.grad is not None and p.grad.abs().sum() > 0
        assert layer.mlp.gate.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("seq_aux", [True, False])
def test_aux_loss_minimal_when_uniform_and_grows_on_collapse(seq_aux):
    alpha = 0.1
    layer = MoEFeedForward(moe(seq_aux=seq_aux, aux_loss_alpha=alpha)).train()
    E, k, B, T = 4, 2, 2, 8
    # Uniform: equal probabilities, slots spread evenly over the experts.
    scores = torch.full((B * T, E), 1.0 / E)
    idx = (torch.arange(B * T * k) % E).view(B * T, k)
    uniform = layer.aux_loss(scores, idx, B)
    assert uniform.item() == pytest.approx(alpha, rel=1e-6)
    # Collapse: every token sends its probability mass and its slots to experts 0 and 1.
    scores = torch.tensor([0.9, 0.1 - 2e-3, 1e-3, 1e-3]).expand(B * T, E)
    idx = torch.tensor([0, 1]).expand(B * T, k)
    collapsed = layer.aux_loss(scores, idx, B)
    assert collapsed.item() > 1.5 * alpha

    # Through the real router: zero gate = uniform probabilities -> exactly alpha.
    x = torch.randn(B, T, 64).abs()
    torch.nn.init.zeros_(layer.gate.weight)
    assert layer(x)[1].item() == pytest.approx(alpha, rel=1e-5)
    # A gate that prefers expert 0 for every (positive) input -> routing collapses, loss grows.
    with torch.no_grad():
        layer.gate.weight[0] = 1.0
    assert layer(x)[1].item() > 1.5 * alpha


def test_dense_aux_loss_is_a_zero_tensor():
    model = MiniMindForCausalLM(tiny())
    out = model(torch.randint(0, 300, (1, 8)))
    assert torch.is_tensor(out.aux_loss) and out.aux_loss.dim() == 0 and out.aux_loss.item() == 0.0


# --- loss, saving, Auto classes ------------------------------------------------------------------------

def test_loss_is_shifted_cross_entropy_with_ignore_index():
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny()).eval()
    ids = torch.randint(0, 300, (2, 10))
    labels = ids.clone()
    labels[:, :4] = -100
    out = model(ids, labels=labels)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 300), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.logits.is_contiguous()


@pytest.mark.parametrize("make", [tiny, moe], ids=["dense", "moe"])
def test_save_and_load_pretrained_round_trip(tmp_path, make):
    torch.manual_seed(0)
    model = MiniMindForCausalLM(make(inference_rope_scaling=True)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    for loaded in (MiniMindForCausalLM.from_pretrained(tmp_path), AutoModelForCausalLM.from_pretrained(tmp_path)):
        assert isinstance(loaded, MiniMindForCausalLM)
        unnamed = {"_name_or_path": ""}
        assert loaded.config.to_diff_dict() | unnamed == model.config.to_diff_dict() | unnamed
        ids = torch.randint(0, 300, (1, 12))
        with torch.no_grad():
            assert torch.equal(loaded.eval()(ids).logits, model(ids).logits)
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "minimind"


def test_dropout_active_only_in_training():
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny(dropout=0.5))
    ids = torch.randint(0, 300, (1, 8))
    model.train()
    assert not torch.equal(model(ids).logits, model(ids).logits)
    model.eval()
    assert torch.equal(model(ids).logits, model(ids).logits)


# --- config ------------------------------------------------------------------------------------------

def test_defaults_are_minimind():
    c = MiniMindConfig()
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (
        512, 8, 8, 2, 6400)
    assert c.intermediate_size == 1408 and c.max_position_embeddings == 32768 and c.rope_theta == 1e6
    assert c.tie_word_embeddings and c.flash_attn and c.dropout == 0.0 and not c.use_moe
    assert (c.n_routed_experts, c.n_shared_experts, c.num_experts_per_tok, c.scoring_func) == (4, 1, 2, "softmax")
    assert c.aux_loss_alpha == 0.01 and c.seq_aux and c.norm_topk_prob
    assert MiniMindConfig(inference_rope_scaling=True).rope_scaling == {
        "type": "yarn", "factor": 16, "original_max_position_embeddings": 2048, "beta_fast": 32.0,
        "beta_slow": 1.0, "attention_factor": 1.0}


@pytest.mark.parametrize("kwargs, field", [
    (dict(hidden_size=500, num_attention_heads=8), "num_attention_heads"),
    (dict(num_attention_heads=8, num_key_value_heads=3), "num_key_value_heads"),
    (dict(use_moe=True, n_routed_experts=4, num_experts_per_tok=5), "num_experts_per_tok"),
    (dict(use_moe=True, scoring_func="sigmoid"), "scoring_func"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(dropout=1.5), "dropout"),
])
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MiniMindConfig(**kwargs)


def test_preset_parameter_counts():
    def count(name):
        with torch.device("meta"):
            return sum(p.numel() for p in MiniMindForCausalLM(preset(name)).parameters())
    assert round(count("small") / 1e6, 1) == 25.8
    assert 0.19e9 < count("medium") < 0.23e9
    assert 1.05e9 < count("large") < 1.2e9
    moe_total = count("small-moe")
    assert moe_total > 2.5 * count("small")
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")


def test_hand_written_cross_entropy_matches_pytorch_with_gradients():
    from minimind.model import cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(12, 50, requires_grad=True)
    targets = torch.randint(0, 50, (12,))
    targets[:3] = -100
    ours = cross_entropy(logits, targets)
    (g_ours,) = torch.autograd.grad(ours, logits)
    ref = F.cross_entropy(logits, targets, ignore_index=-100)
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    assert (g_ours - g_ref).abs().max() < 1e-7
