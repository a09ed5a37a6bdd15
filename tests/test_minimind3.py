"""MiniMind-3's architecture (qk_norm, free head_dim, top-1 MoE without shared experts): against transformers' Qwen3
and Qwen3-MoE with the same weights, its cache against the full forward, its router against a naive reference,
its presets against the public model card, and the import of state dicts with exactly the public key set."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM

from minimind import MiniMindConfig, MiniMindForCausalLM, preset
from minimind.export.hf import export_hf, qwen3_config, qwen3_moe_config
from minimind.export.import_minimind import import_minimind
from minimind.info import parameter_counts
from minimind.model import MoEFeedForward
from minimind.tokenizer import load_tokenizer


def tiny3(**overrides):
    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                qk_norm=True, vocab_size=300, max_position_embeddings=4096)
    return MiniMindConfig(**{**base, **overrides})


def moe3(**overrides):
    return tiny3(**{**dict(use_moe=True, n_routed_experts=4, moe_intermediate_size=96), **overrides})


def perturbed(config):
    """A model whose norms are not all ones and whose router is not near-uniform, so every weight matters."""
    torch.manual_seed(0)
    model = MiniMindForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def left_padded(batch=3, T=20, vocab=300):
    ids = torch.randint(3, vocab, (batch, T))
    mask = torch.ones(batch, T, dtype=torch.long)
    for b in range(1, batch):
        mask[b, : 4 * b] = 0
    return ids, mask


@pytest.mark.parametrize("yarn", [False, True])
@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_logits_match_qwen3(tmp_path, kind, yarn):
    """Same weights, fp32: dense against Qwen3ForCausalLM, MoE against Qwen3MoeForCausalLM, loaded from our
    Hugging Face export (plain transformers, no custom code)."""
    config = (moe3 if kind == "moe" else tiny3)(inference_rope_scaling=yarn)
    ours = perturbed(config)
    export_hf(ours, load_tokenizer(None), tmp_path / "hf")
    architecture = json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"]
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    expected = Qwen3MoeForCausalLM if kind == "moe" else Qwen3ForCausalLM
    assert type(theirs) is expected and architecture == [expected.__name__]
    ids = torch.randint(0, config.vocab_size, (2, 40))
    with torch.no_grad():
        assert (ours(ids).logits - theirs(ids).logits).abs().max() < 1e-4
        ids, mask = left_padded()
        a, b = ours(ids, attention_mask=mask).logits, theirs(ids, attention_mask=mask).logits
    assert (a - b)[mask.bool()].abs().max() < 1e-4


def test_qk_norm_is_applied_per_head_before_rope():
    config = tiny3()
    model = perturbed(config)
    ids = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        before = model(ids).logits
        model.model.layers[0].self_attn.q_norm.weight.mul_(2.0)  # scales every query: attention sharpens
        assert (model(ids).logits - before).abs().max() > 1e-3
    # The norms act on head_dim (24 here, not hidden / heads = 16).
    assert model.model.layers[0].self_attn.q_norm.weight.shape == (24,)
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (4 * 24, 64)


@pytest.mark.parametrize("make", [tiny3, moe3], ids=["dense", "moe"])
def test_cache_equals_full_forward(make):
    model = perturbed(make())
    ids, mask = left_padded()
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        out = model(ids[:, :10], attention_mask=mask[:, :10], use_cache=True)
        steps, cache = [out.logits], out.cache
        for t in range(10, ids.shape[1]):
            out = model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache, use_cache=True)
            steps.append(out.logits)
    assert (torch.cat(steps, 1) - full)[mask.bool()].abs().max() < 1e-4


def naive_minimind3_moe(layer: MoEFeedForward, x):
    """One token at a time, as MiniMind-3 and Qwen3-MoE route: softmax, top-k, renormalise (any k), no shared
    experts."""
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            h = x[b, t]
            w, idx = F.softmax(layer.gate.weight @ h, dim=-1).topk(layer.top_k)
            if layer.norm_topk_prob:
                w = w / w.sum()
            out[b, t] = sum(wi * layer.experts[i](h[None])[0] for wi, i in zip(w, idx.tolist()))
    return out


@pytest.mark.parametrize("norm_topk_prob", [True, False])
@pytest.mark.parametrize("top_k", [1, 2])
def test_moe_dispatch_equals_reference_without_shared_experts(top_k, norm_topk_prob):
    torch.manual_seed(0)
    layer = MoEFeedForward(moe3(num_experts_per_tok=top_k, norm_topk_prob=norm_topk_prob))
    assert len(layer.shared_experts) == 0
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 7, 64)
    y, _ = layer.eval()(x)
    ref = naive_minimind3_moe(layer, x)
    assert (y - ref).abs().max() < 1e-5 * ref.abs().max()
    if top_k == 1 and norm_topk_prob:  # MiniMind-3 weights its one expert by 1, not by its probability
        only = torch.stack([layer.experts[i](x.reshape(-1, 64)[n:n + 1])[0]
                            for n, i in enumerate(layer.route(x)[1][:, 0].tolist())])
        assert (y.reshape(-1, 64) - only).abs().max() < 1e-5 * only.abs().max()


def test_aux_loss_minimal_under_uniform_routing():
    alpha, E, k, N = 5e-4, 4, 1, 16
    layer = MoEFeedForward(moe3()).train()
    assert layer.alpha == alpha and layer.top_k == k
    uniform = layer.aux_loss(torch.full((N, E), 1 / E), torch.arange(N).remainder(E)[:, None], 1)
    assert uniform.item() == pytest.approx(alpha * k, rel=1e-6)  # alpha * E * sum_i (1/E)(1/E)
    skewed = layer.aux_loss(torch.tensor([0.7, 0.1, 0.1, 0.1]).expand(N, E), torch.zeros(N, 1, dtype=torch.long), 1)
    assert skewed.item() == pytest.approx(alpha * E * 0.7, rel=1e-6)  # all tokens on expert 0, P_0 = 0.7
    half = layer.aux_loss(torch.tensor([0.4, 0.4, 0.1, 0.1]).expand(N, E), torch.arange(N).remainder(2)[:, None], 1)
    assert half.item() == pytest.approx(alpha * E * 0.4, rel=1e-6)  # two experts share the tokens
    assert uniform < half < skewed
    # Through the real router: a zero gate gives uniform probabilities; the loss is a 0-dim tensor with a gradient.
    torch.nn.init.zeros_(layer.gate.weight)
    with torch.no_grad():
        layer.gate.weight[0] += 1.0
    _, aux = layer(torch.randn(2, 8, 64).abs())
    assert aux.dim() == 0 and aux.requires_grad and aux.item() > alpha


def test_presets_match_the_public_model_card():
    dense, moe = parameter_counts(preset("minimind3")), parameter_counts(preset("minimind3-moe"))
    assert round(dense["total"] / 1e6) == 64  # minimind-3: 64M
    assert round(moe["total"] / 1e6) == 198 and round(moe["active"] / 1e6) == 64  # minimind-3-moe: 198M-A64M
    c = preset("minimind3-moe")
    assert (c.head_dim, c.intermediate_size, c.rms_norm_eps, c.num_key_value_heads) == (96, 2432, 1e-6, 4)
    assert (c.n_routed_experts, c.num_experts_per_tok, c.n_shared_experts, c.moe_router) == (4, 1, 0, "minimind3")
    assert c.aux_loss_alpha == 5e-4
    # MiniMind 2 stays the default.
    assert not MiniMindConfig().qk_norm and MiniMindConfig().intermediate_size == 1408


def test_minimind3_config_json_reads_as_minimind3():
    """The fields MiniMind-3's own config class writes (its names: num_experts, router_aux_loss_coef)."""
    theirs = {"hidden_size": 128, "num_hidden_layers": 2, "use_moe": True, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 448, "rms_norm_eps": 1e-6,
              "num_experts": 4, "num_experts_per_tok": 1, "moe_intermediate_size": 448, "norm_topk_prob": True,
              "router_aux_loss_coef": 5e-4, "rope_scaling": None, "model_type": "minimind"}
    c = MiniMindConfig(**theirs)
    assert c.qk_norm and c.n_routed_experts == c.num_experts == 4 and c.n_shared_experts == 0
    assert c.moe_router == "minimind3" and c.aux_loss_alpha == 5e-4
    again = MiniMindConfig(**c.to_dict())  # ours round-trips, and stays what it is
    assert (again.qk_norm, again.moe_router, again.n_shared_experts) == (True, "minimind3", 0)


def public_minimind3_keys(layers: int, moe: bool, experts: int = 4) -> list[str]:
    """The state dict keys of the public MiniMind-3 model (model/model_minimind.py), written out by hand."""
    keys = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    for i in range(layers):
        p = f"model.layers.{i}"
        keys += [f"{p}.self_attn.{n}.weight" for n in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")]
        keys += [f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"]
        if moe:
            keys.append(f"{p}.mlp.gate.weight")
            keys += [f"{p}.mlp.experts.{e}.{n}.weight" for e in range(experts) for n in ("gate_proj", "up_proj",
                                                                                          "down_proj")]
        else:
            keys += [f"{p}.mlp.{n}.weight" for n in ("gate_proj", "up_proj", "down_proj")]
    return keys


def synthetic_state(keys, hidden=128, heads=4, kv=2, head_dim=32, ffn=448, vocab=6400, experts=4):
    """Random tensors of MiniMind-3's shapes for `keys` (tied lm_head, as its checkpoints are)."""
    shapes = {"embed_tokens": (vocab, hidden), "q_proj": (heads * head_dim, hidden), "k_proj": (kv * head_dim, hidden),
              "v_proj": (kv * head_dim, hidden), "o_proj": (hidden, heads * head_dim), "q_norm": (head_dim,),
              "k_norm": (head_dim,), "gate": (experts, hidden), "gate_proj": (ffn, hidden), "up_proj": (ffn, hidden),
              "down_proj": (hidden, ffn)}
    g = torch.Generator().manual_seed(0)
    state = {}
    for k in keys:
        name = k.split(".")[-2]
        if name in ("norm", "input_layernorm", "post_attention_layernorm", "q_norm", "k_norm"):
            shape = shapes.get(name, (hidden,))
            state[k] = 1 + 0.1 * torch.randn(shape, generator=g)
        elif k != "lm_head.weight":
            state[k] = 0.05 * torch.randn(shapes[name], generator=g)
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return {k: v.half() for k, v in state.items()}  # the public .pth files are fp16


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_import_public_minimind3_state_dict(tmp_path, moe, capsys):
    keys = public_minimind3_keys(2, moe)
    state = synthetic_state(keys)
    assert sorted(state) == sorted(keys)
    torch.save(state, tmp_path / "full_sft_128.pth")
    from minimind.cli import main
    main(["import", str(tmp_path / "full_sft_128.pth"), "--out", str(tmp_path / "m3"), "--max_position_embeddings",
          "512"])
    printed = capsys.readouterr().out
    assert "MiniMind-3 checkpoint" in printed and "(QK-norm)" in printed
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m3").eval()
    c = model.config
    assert (c.qk_norm, c.head_dim, c.num_attention_heads, c.num_key_value_heads, c.rms_norm_eps) == (
        True, 32, 4, 2, 1e-6)  # heads from q_norm: no --num_heads needed
    if moe:
        assert (c.n_routed_experts, c.num_experts_per_tok, c.n_shared_experts, c.moe_router) == (4, 1, 0, "minimind3")
    # The reference: transformers' own Qwen3 / Qwen3-MoE built from the same state dict.
    ref_cls, ref_config = (Qwen3MoeForCausalLM, qwen3_moe_config(c)) if moe else (Qwen3ForCausalLM, qwen3_config(c))
    ref_config.save_pretrained(tmp_path / "ref")
    from safetensors.torch import save_file
    save_file({k: v.float() for k, v in state.items() if k != "lm_head.weight"}, str(tmp_path / "ref" /
                                                                                  "model.safetensors"))
    ref = ref_cls.from_pretrained(tmp_path / "ref").eval()
    ids = torch.randint(0, 6400, (2, 16))
    with torch.no_grad():
        assert (model(ids).logits - ref(ids).logits).abs().max() < 1e-4


def test_import_refuses_a_head_count_that_does_not_fit(tmp_path):
    state = synthetic_state(public_minimind3_keys(1, False))
    torch.save(state, tmp_path / "m.pth")
    with pytest.raises(ValueError, match="--num_heads 8 does not fit.*4 heads"):
        import_minimind(tmp_path / "m.pth", tmp_path / "out", num_heads=8)


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_gguf_is_llama_cpp_qwen3(tmp_path, kind):
    """The tensor names and metadata keys of llama.cpp's qwen3 / qwen3moe (checked against the gguf package's own
    tables), and the file read back by transformers' GGUF loader gives our logits. Its qwen3 reader ignores
    attention.key_length and its qwen3_moe reader expert_feed_forward_length, so the read-back is given the config."""
    import gguf

    from minimind.export.gguf import export_gguf
    from minimind.export.hf import hf_target

    config = (moe3 if kind == "moe" else tiny3)()
    model = perturbed(config)
    export_gguf(model, load_tokenizer(None), tmp_path / "m.gguf", dtype="f32")
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    fields = {name: f.contents() for name, f in reader.fields.items()}
    arch = {"dense": gguf.MODEL_ARCH.QWEN3, "moe": gguf.MODEL_ARCH.QWEN3MOE}[kind]
    name = gguf.MODEL_ARCH_NAMES[arch]
    assert fields["general.architecture"] == name
    allowed = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[arch]}
    names = {t.name.rsplit(".", 1)[0] for t in reader.tensors}
    assert {n.replace(n.split(".")[1], "{bid}", 1) if n.startswith("blk.") else n for n in names} <= allowed
    assert "blk.1.attn_q_norm" in names and "blk.1.attn_k_norm" in names
    K = gguf.Keys
    assert fields[K.Attention.KEY_LENGTH.format(arch=name)] == 24  # head_dim, not hidden / heads
    assert fields[K.Attention.HEAD_COUNT.format(arch=name)] == 4
    assert fields[K.Attention.LAYERNORM_RMS_EPS.format(arch=name)] == pytest.approx(1e-6)
    stored = {t.name: torch.from_numpy(t.data.copy()) for t in reader.tensors}
    q = model.model.layers[0].self_attn.q_proj.weight.detach()
    assert torch.equal(stored["blk.0.attn_q.weight"], q)  # qwen3 rotates halves, as we do: no permutation
    if kind == "moe":
        assert fields[K.LLM.EXPERT_COUNT.format(arch=name)] == 4
        assert fields[K.LLM.EXPERT_USED_COUNT.format(arch=name)] == 1
        assert fields[K.LLM.EXPERT_FEED_FORWARD_LENGTH.format(arch=name)] == 96
        assert stored["blk.0.ffn_gate_exps.weight"].shape == (4, 96, 64)
    target, _, _ = hf_target(config, model.state_dict())
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", config=target).eval()
    ids = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        assert (theirs(ids).logits - model(ids).logits).abs().max() < 1e-4


def test_minimind3_moe_with_a_probability_weighted_expert_is_refused_by_gguf(tmp_path):
    from minimind.export.gguf import export_gguf

    model = perturbed(moe3(norm_topk_prob=False))
    with pytest.raises(ValueError, match="always renormalizes"):
        export_gguf(model, load_tokenizer(None), tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_minimind3_moe_through_every_stage(tmp_path, capsys):
    """The shared paths at tiny size on a MiniMind-3 MoE: pretraining from the preset, LoRA, DPO, distillation into a
    dense MiniMind-3 student, greedy generation in fp32 and int8, and serving through the official client."""
    import openai
    from test_serve import start_server

    from minimind.checkpoint import load_model
    from minimind.cli import main
    from minimind.infer.generate import generate_text
    from minimind.serve.app import create_app

    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": f"The number {i} comes after {i - 1}."}) + "\n"
                                              for i in range(64)))
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps({"conversations": [
        {"role": "user", "content": f"What is {i} plus one?"}, {"role": "assistant", "content": f"It is {i + 1}."}]})
        + "\n" for i in range(32)))
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"prompt": f"What is {i} plus one?", "chosen":
                                                               f"It is {i + 1}.", "rejected": "No."}) + "\n"
                                                   for i in range(32)))
    shape = ["--hidden_size", "32", "--num_layers", "2", "--num_heads", "2", "--num_kv_heads", "1"]
    run = ["--max_seq_len", "32", "--batch_size", "4", "--max_steps", "3", "--eval_interval", "0", "--dtype", "fp32",
           "--save_steps", "0", "--learning_rate", "3e-3"]
    pre = tmp_path / "pre"
    main(["train", "--preset", "minimind3-moe", *shape, *run, "--data", str(tmp_path / "c.jsonl"),
          "--output_dir", str(pre)])
    model, tokenizer = load_model(str(pre))
    c = model.config
    assert (c.qk_norm, c.use_moe, c.moe_router, c.num_experts_per_tok, c.n_shared_experts) == (
        True, True, "minimind3", 1, 0)
    steps = [r for r in map(json.loads, (pre / "metrics.jsonl").read_text().splitlines()) if "aux" in r]
    assert steps and all(0 < r["aux"] < 0.01 and r["loss"] == pytest.approx(r["ce"] + r["aux"], rel=1e-4)
                         for r in steps)  # MiniMind-3's load-balancing loss (5e-4 per layer near uniform) is trained

    main(["lora", "--pretrained_path", str(pre), *run, "--data", str(tmp_path / "chat.jsonl"), "--output_dir",
          str(tmp_path / "lora")])
    adapted = load_model(str(pre), adapter=str(tmp_path / "lora"))[0]  # the base + its trained adapter
    probe = torch.randint(3, 200, (1, 8))
    with torch.no_grad():
        assert not torch.allclose(adapted(probe).logits, model(probe).logits)
    main(["dpo", "--pretrained_path", str(pre), *run, "--data", str(tmp_path / "pairs.jsonl"), "--output_dir",
          str(tmp_path / "dpo")])
    assert load_model(str(tmp_path / "dpo"))[0].config.qk_norm
    main(["distill", "--teacher", str(pre), "--preset", "minimind3", *shape, *run, "--data",
          str(tmp_path / "chat.jsonl"), "--output_dir", str(tmp_path / "student")])
    student = load_model(str(tmp_path / "student"))[0].config
    assert student.qk_norm and not student.use_moe

    capsys.readouterr()
    greedy = generate_text(model, tokenizer, ["The number 7"], max_new_tokens=6, temperature=0)[0]
    main(["generate", str(pre), "--prompt", "The number 7", "--temperature", "0", "--max_new_tokens", "6"])
    assert greedy in capsys.readouterr().out
    main(["generate", str(pre), "--prompt", "The number 7", "--temperature", "0", "--max_new_tokens", "6",
          "--quantize", "int8"])
    assert capsys.readouterr().out.strip()

    server, thread, url = start_server(create_app(model, tokenizer, model_name="m3"))
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model="m3", messages=[{"role": "user", "content": "What is 3?"}],
                                               max_tokens=5, temperature=0)
        assert reply.usage.completion_tokens >= 1 and reply.choices[0].finish_reason in ("stop", "length")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
