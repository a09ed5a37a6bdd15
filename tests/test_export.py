"""Export to Hugging Face Llama and GGUF, checked by third-party readers, and import of public MiniMind checkpoints.

The exported files are loaded by plain `transformers` in a separate Python process that never imports minimind
(Llama directories with AutoModelForCausalLM, GGUF files with its GGUF reader, which undoes llama.cpp's Q/K
permutation), and their logits and token ids are compared with ours.
"""

import json
import math
import subprocess
import sys

import pytest
import torch
import transformers
from packaging.version import Version

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.checkpoint import load_model
from minimind.cli import main
from minimind.export.gguf import from_llama_cpp_rope, to_llama_cpp_rope
from minimind.model import apply_rope, rope_cos_sin
from minimind.tokenizer import load_tokenizer, save_tokenizer

TEXTS = ["Hello world, it's 2024!  Two  spaces.", "你好，世界。今天天气很好！", "emoji 😀🎉 and ünïcödé",
         "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"]


def tiny(**overrides):
    base = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 6400, "max_position_embeddings": 512}
    return MiniMindConfig(**{**base, **overrides})


def random_model(config, seed=0):
    """Weights of unit-scale activations (not the tiny init), so a wrong RoPE layout shows in the logits."""
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if p.ndim == 1 else torch.randn_like(p) / p.shape[1] ** 0.5)
    return model


def save(model, path):
    model.save_pretrained(str(path))
    save_tokenizer(load_tokenizer(None), path)
    return str(path)


def run(*argv):
    main([str(a) for a in argv])


READER = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
jobs, ids, texts, out = json.loads(sys.argv[1])
ids, results = torch.tensor(ids), {}
for name, folder, gguf in jobs:
    kw = {"gguf_file": gguf, "dtype": torch.float32} if gguf else {}
    model = AutoModelForCausalLM.from_pretrained(folder, **kw).eval()
    tok = AutoTokenizer.from_pretrained(folder, **({"gguf_file": gguf} if gguf else {}))
    with torch.no_grad():
        logits = model(ids).logits
    encoded = [tok.encode(t, add_special_tokens=False) for t in texts]  # the reader's own specials aside
    results[name] = {"class": type(model).__name__, "logits": logits, "ids": encoded,
                     "eos": tok.eos_token_id, "bos": tok.bos_token_id, "pad": tok.pad_token_id,
                     "chat": tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                     add_generation_prompt=True)}
assert not [m for m in sys.modules if m.startswith("minimind")], "minimind was imported"
torch.save(results, out)
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Five models (tied, untied, YaRN, two MoE), exported through the CLI, read back by plain transformers
    elsewhere."""
    root = tmp_path_factory.mktemp("export")
    moe = dict(use_moe=True, n_routed_experts=4, num_experts_per_tok=2, norm_topk_prob=True)
    models = {"tied": random_model(tiny()), "untied": random_model(tiny(tie_word_embeddings=False), seed=1),
              "yarn": random_model(tiny(inference_rope_scaling=True, max_position_embeddings=4096), seed=2),
              "moe": random_model(tiny(**moe, n_shared_experts=1), seed=3),
              "moe-3of4-2shared": random_model(tiny(**{**moe, "num_experts_per_tok": 3}, n_shared_experts=2), seed=4)}
    for name, model in models.items():
        save(model, root / name)
    jobs = []
    for name in models:
        run("export", root / name, "--format", "hf", "--out", root / f"{name}-hf")
        jobs.append((f"{name}-hf", str(root / f"{name}-hf"), None))
    for dtype in ("f32", "f16", "bf16", "q8_0", "q4_1"):
        gguf = root / "gguf" / f"tied-{dtype}.gguf"
        run("export", root / "tied", "--format", "gguf", "--dtype", dtype, "--out", gguf)
        jobs.append((f"tied-{dtype}", str(root / "gguf"), f"tied-{dtype}.gguf"))
    run("export", root / "untied", "--format", "gguf", "--dtype", "f32", "--out", root / "gguf" / "untied-f32.gguf")
    jobs.append(("untied-f32", str(root / "gguf"), "untied-f32.gguf"))
    # Long enough (> 2048 positions would need YaRN's range; 300 is plenty to exercise RoPE) and fixed.
    ids = torch.randint(0, 6400, (2, 300), generator=torch.Generator().manual_seed(0))
    out = root / "results.pt"
    subprocess.run([sys.executable, "-c", READER, json.dumps([jobs, ids.tolist(), TEXTS, str(out)])], check=True,
                   cwd=root, capture_output=True)
    with torch.no_grad():
        ours = {name: model(ids).logits for name, model in models.items()}
    return {"root": root, "ours": ours, "theirs": torch.load(out), "models": models}


# --- Hugging Face Llama ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tied", "untied", "yarn"])
def test_hf_export_has_our_logits_in_plain_transformers(exported, name):
    theirs = exported["theirs"][f"{name}-hf"]
    assert theirs["class"] == "LlamaForCausalLM"
    assert (theirs["logits"] - exported["ours"][name]).abs().max() < 1e-4
    config = json.loads((exported["root"] / f"{name}-hf" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["rope_parameters"]["rope_type"] == ("yarn" if name == "yarn" else "default")
    generation = json.loads((exported["root"] / f"{name}-hf" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2


@pytest.mark.parametrize("name", ["moe", "moe-3of4-2shared"])
def test_moe_exports_as_mixtral_with_shared_experts_folded(exported, name):
    theirs, model = exported["theirs"][f"{name}-hf"], exported["models"][name]
    assert theirs["class"] == "MixtralForCausalLM"
    assert (theirs["logits"] - exported["ours"][name]).abs().max() < 1e-4
    config = json.loads((exported["root"] / f"{name}-hf" / "config.json").read_text())
    assert config["num_local_experts"] == 4 and config["num_experts_per_tok"] == model.config.num_experts_per_tok
    assert config["intermediate_size"] == model.config.intermediate_size * (1 + model.config.n_shared_experts)


def test_hf_export_tokenizer_and_chat_template_are_ours(exported):
    theirs, ours = exported["theirs"]["tied-hf"], load_tokenizer(None)
    assert theirs["ids"] == [ours.encode(t) for t in TEXTS]
    assert (theirs["bos"], theirs["eos"], theirs["pad"]) == (1, 2, 0)
    assert theirs["chat"] == ours.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                      add_generation_prompt=True)


def test_hf_export_half_precision(exported, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    run("export", exported["root"] / "tied", "--format", "hf", "--dtype", "bf16", "--out", tmp_path / "bf16")
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt") as f:
        names = list(f.keys())
        assert {f.get_tensor(k).dtype for k in names} == {torch.bfloat16}
        assert "lm_head.weight" not in names  # tied: Llama re-ties it on load
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "bf16"), dtype=torch.float32).eval()
    ids = torch.randint(0, 6400, (1, 64), generator=torch.Generator().manual_seed(0))
    ours = exported["models"]["tied"]
    with torch.no_grad():
        a, b = model(ids).logits, ours(ids).logits
    assert (a - b).abs().max() < 0.05 * b.abs().max()


# --- GGUF ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,tolerance,agreement", [("tied-f32", 1e-4, 1.0), ("untied-f32", 1e-4, 1.0),
                                                      ("tied-f16", 0.01, 0.98), ("tied-bf16", 0.03, 0.9),
                                                      ("tied-q8_0", 0.1, 0.85)])
def test_gguf_read_by_transformers_has_our_logits(exported, name, tolerance, agreement):
    """f32: equal logits (absolute 1e-4). Half precision and q8_0: within a fraction of the logits' range, and the
    same greedy token at most positions (a random model's top tokens are near ties, a worst case for rounding)."""
    theirs = exported["theirs"][name]
    ours = exported["ours"][name.split("-")[0]]
    assert theirs["class"] == "LlamaForCausalLM"
    scale = 1.0 if name.endswith("f32") else ours.abs().max()
    assert (theirs["logits"] - ours).abs().max() < tolerance * scale
    assert (theirs["logits"].argmax(-1) == ours.argmax(-1)).float().mean() >= agreement


def test_gguf_stores_q_and_k_in_llama_cpp_layout(exported):
    """As llama.cpp's converter: Q/K rows permuted per head; the logits tests above show the reader undoes it."""
    import gguf

    reader = gguf.GGUFReader(str(exported["root"] / "gguf" / "tied-f32.gguf"))
    stored = {t.name: torch.from_numpy(t.data.copy()) for t in reader.tensors}
    attn = exported["models"]["tied"].model.layers[0].self_attn
    q, k = attn.q_proj.weight.detach(), attn.k_proj.weight.detach()
    assert torch.equal(stored["blk.0.attn_q.weight"], to_llama_cpp_rope(q, 4))
    assert not torch.equal(q, stored["blk.0.attn_q.weight"])
    assert torch.equal(stored["blk.0.attn_k.weight"], to_llama_cpp_rope(k, 2))
    assert torch.equal(stored["blk.0.attn_v.weight"], attn.v_proj.weight.detach())


def test_gguf_moe_is_mixtral_shaped_with_shared_experts_folded(exported, tmp_path):
    """An MoE model in llama.cpp's Mixtral layout: router `ffn_gate_inp`, experts stacked in `ffn_*_exps`, each
    routed expert widened by the shared ones (the same folding whose logits test_moe_exports_as_mixtral checks in
    transformers; llama.cpp itself, which transformers cannot stand in for here, gave our logits to 4e-6 when
    checked by hand)."""
    model = exported["models"]["moe-3of4-2shared"]
    ff = model.config.intermediate_size
    run("export", exported["root"] / "moe-3of4-2shared", "--format", "gguf", "--dtype", "f32", "--out",
        tmp_path / "moe.gguf")
    fields, tensors = gguf_fields(tmp_path / "moe.gguf")
    assert fields["llama.expert_count"] == 4 and fields["llama.expert_used_count"] == 3
    assert fields["llama.feed_forward_length"] == 3 * ff  # one routed + two shared experts' width
    layer = {n.split(".", 2)[2] for n in tensors if n.startswith("blk.1.")}
    assert layer == {"attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                     "ffn_norm.weight", "ffn_gate_inp.weight", "ffn_gate_exps.weight", "ffn_up_exps.weight",
                     "ffn_down_exps.weight"}
    mlp = model.model.layers[1].mlp
    gate = torch.from_numpy(tensors["blk.1.ffn_gate_exps.weight"].data.copy())  # (experts, ff, hidden)
    down = torch.from_numpy(tensors["blk.1.ffn_down_exps.weight"].data.copy())  # (experts, hidden, ff)
    assert gate.shape == (4, 3 * ff, 64) and down.shape == (4, 64, 3 * ff)
    expert, shared = mlp.experts[2], mlp.shared_experts[1]
    assert torch.equal(gate[2, :ff], expert.gate_proj.weight.detach())
    assert torch.equal(gate[2, 2 * ff:], shared.gate_proj.weight.detach())
    assert torch.equal(down[2][:, 2 * ff:], shared.down_proj.weight.detach())
    assert torch.equal(torch.from_numpy(tensors["blk.1.ffn_gate_inp.weight"].data.copy()), mlp.gate.weight.detach())


def test_gguf_tokenizer_encodes_like_ours(exported):
    ours = load_tokenizer(None)
    theirs = exported["theirs"]["tied-f32"]
    assert theirs["ids"] == [ours.encode(t) for t in TEXTS]
    if Version(transformers.__version__) >= Version("5.20"):  # before 5.20 its GGUF reader took eos from the bos id
        assert (theirs["bos"], theirs["eos"], theirs["pad"]) == (1, 2, 0)
    assert theirs["chat"] == ours.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                      add_generation_prompt=True)


def gguf_fields(path):
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {}
    for name, field in reader.fields.items():
        value = field.contents()
        fields[name] = value
    return fields, {t.name: t for t in reader.tensors}


def test_gguf_q4_1_is_our_int4_rounding(exported):
    """q4_1 in the file holds the weights `--quantize int4` computes with (minimind.quantize.int4_groups: groups of
    32, d = (max - min) / 15, offset min), read back through the gguf package's own dequantizer: equal up to q4_1's
    fp16 scales and offsets."""
    import gguf

    from minimind.quantize import int4_groups

    _, tensors = gguf_fields(exported["root"] / "gguf" / "tied-q4_1.gguf")
    layer = exported["models"]["tied"].model.layers[1]
    for name, weight in [("blk.1.ffn_up.weight", layer.mlp.up_proj.weight),
                         ("blk.1.attn_v.weight", layer.self_attn.v_proj.weight)]:
        t = tensors[name]
        assert t.tensor_type == gguf.GGMLQuantizationType.Q4_1
        theirs = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy()).reshape(weight.shape)
        q, d, m = int4_groups(weight)
        ours = q.float() * d.repeat_interleave(32, dim=1) + m.repeat_interleave(32, dim=1)
        assert (theirs - ours).abs().max() <= 2e-3 * ours.abs().max()


def test_gguf_metadata_and_tensors(exported):
    import gguf

    config = exported["models"]["tied"].config
    fields, tensors = gguf_fields(exported["root"] / "gguf" / "tied-q8_0.gguf")
    expected = {"general.architecture": "llama", "llama.context_length": 512, "llama.embedding_length": 64,
                "llama.block_count": 2, "llama.feed_forward_length": config.intermediate_size,
                "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
                "llama.rope.dimension_count": 16, "llama.rope.freq_base": 1e6, "llama.vocab_size": 6400,
                "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.bos_token_id": 1,
                "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.padding_token_id": 0,
                "tokenizer.ggml.add_bos_token": False, "general.file_type": gguf.LlamaFileType.MOSTLY_Q8_0}
    for key, value in expected.items():
        assert fields[key] == pytest.approx(value) if isinstance(value, float) else fields[key] == value, key
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert len(fields["tokenizer.ggml.tokens"]) == 6400 and fields["tokenizer.ggml.tokens"][1] == "<|im_start|>"
    assert fields["tokenizer.ggml.token_type"][:4] == [3, 3, 3, 1]  # control, control, control, normal
    assert fields["tokenizer.ggml.merges"][0] == "t h"
    assert "<|im_start|>" in fields["tokenizer.chat_template"]
    names = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(2) for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                                         "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(tensors) == names  # tied: no output.weight, as llama.cpp's converter writes it
    Q = gguf.GGMLQuantizationType
    assert tensors["blk.0.attn_q.weight"].tensor_type == Q.Q8_0
    assert tensors["blk.0.attn_norm.weight"].tensor_type == Q.F32
    assert "yarn" not in str(fields.get("llama.rope.scaling.type"))

    fields, tensors = gguf_fields(exported["root"] / "gguf" / "untied-f32.gguf")
    assert "output.weight" in tensors


def test_gguf_yarn_metadata(exported, tmp_path):
    run("export", exported["root"] / "yarn", "--format", "gguf", "--out", tmp_path / "yarn.gguf")
    fields, _ = gguf_fields(tmp_path / "yarn.gguf")
    assert fields["llama.rope.scaling.type"] == "yarn"
    assert fields["llama.rope.scaling.factor"] == 16
    assert fields["llama.rope.scaling.original_context_length"] == 2048
    assert fields["llama.rope.scaling.yarn_beta_fast"] == 32 and fields["llama.rope.scaling.yarn_beta_slow"] == 1
    # llama.cpp scales by 1 + 0.1 ln(factor) itself; MiniMind's attention_factor (1.0) is what must come out
    assert fields["llama.rope.scaling.attn_factor"] * (1 + 0.1 * math.log(16)) == pytest.approx(1.0)
    assert fields["llama.context_length"] == 4096


def test_qk_permutation_is_llama_cpp_pair_rope():
    """Rows permuted by to_llama_cpp_rope, rotated as adjacent pairs (llama.cpp, Meta, MiniMind v1's complex RoPE),
    give the same attention scores as the original rows rotated as halves (Hugging Face, us)."""
    config = tiny()
    H, D, T = 4, config.head_dim, 10
    g = torch.Generator().manual_seed(0)
    w_q, w_k, x = (torch.randn(n, 64, generator=g) for n in (H * D, 2 * D, T))
    cos, sin = rope_cos_sin(config, T)
    q, k = (x @ w_q.T).view(T, H, D).transpose(0, 1), (x @ w_k.T).view(T, 2, D).transpose(0, 1)
    q, k = apply_rope(q, k, cos, sin)
    ours = q @ k.repeat_interleave(2, 0).transpose(-1, -2)

    def pair_rope(t):  # (heads, T, D): rotate (2i, 2i+1) by angle pos * freq_i, as complex numbers
        angles = torch.polar(torch.ones(T, D // 2), torch.atan2(sin[:, : D // 2], cos[:, : D // 2]))
        return torch.view_as_real(torch.view_as_complex(t.reshape(*t.shape[:-1], -1, 2)) * angles).flatten(-2)

    w_q2, w_k2 = to_llama_cpp_rope(w_q, H), to_llama_cpp_rope(w_k, 2)
    q2 = pair_rope((x @ w_q2.T).view(T, H, D).transpose(0, 1))
    k2 = pair_rope((x @ w_k2.T).view(T, 2, D).transpose(0, 1))
    theirs = q2 @ k2.repeat_interleave(2, 0).transpose(-1, -2)
    assert (ours - theirs).abs().max() < 1e-6 * ours.abs().max()  # scores of size ~100: fp32 rounding only
    assert torch.equal(from_llama_cpp_rope(w_q2, H), w_q)


# --- errors and atomic writes ------------------------------------------------------------------------------

def test_export_errors(exported, tmp_path, capsys):
    root = exported["root"]

    def fails(*argv):
        with pytest.raises(SystemExit) as e:
            run(*argv)
        assert e.value.code == 2
        return capsys.readouterr().err

    moe = save(MiniMindForCausalLM(tiny(use_moe=True, n_routed_experts=4, norm_topk_prob=False)), tmp_path / "moe")
    assert "renormalizes the top-k" in fails("export", moe, "--format", "hf", "--out", tmp_path / "x")
    assert "renormalizes the top-k" in fails("export", moe, "--format", "gguf", "--out", tmp_path / "x.gguf")
    assert "invalid choice" in fails("export", root / "tied", "--format", "onnx", "--out", tmp_path / "x")
    (tmp_path / "a_file").write_text("not a folder")
    assert "cannot write there" in fails("export", root / "tied", "--format", "gguf", "--out",
                                         tmp_path / "a_file" / "x.gguf")
    err = fails("export", root / "tied", "--format", "hf", "--out", root / "tied-hf")
    assert "not empty" in err and "--force" in err
    err = fails("export", root / "tied", "--format", "gguf", "--out", root / "gguf" / "tied-f32.gguf")
    assert "file exists" in err and "--force" in err
    assert "ends in .gguf" in fails("export", root / "tied", "--format", "gguf", "--out", tmp_path / "model.bin")
    assert "q8_0" in fails("export", root / "tied", "--format", "gguf", "--dtype", "q4", "--out", tmp_path / "a.gguf")
    assert "fp32, bf16 or fp16" in fails("export", root / "tied", "--format", "hf", "--dtype", "q8_0", "--out",
                                         tmp_path / "h")
    assert "no such file" in fails("export", tmp_path / "nothing", "--format", "hf", "--out", tmp_path / "h")
    assert not (tmp_path / "x").exists() and not (tmp_path / "h").exists()
    # --force replaces the files it writes
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep")
    run("export", root / "tied", "--format", "hf", "--out", tmp_path / "busy", "--force")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep" and (tmp_path / "busy" / "config.json").exists()


def test_interrupted_export_leaves_nothing(exported, tmp_path, monkeypatch):
    import gguf

    import minimind.tokenizer

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(SystemExit):
        run("export", exported["root"] / "tied", "--format", "gguf", "--out", tmp_path / "m.gguf")
    monkeypatch.setattr(minimind.tokenizer, "save_tokenizer", boom)
    with pytest.raises(SystemExit):
        run("export", exported["root"] / "tied", "--format", "hf", "--out", tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []  # neither the outputs nor their temporary files


# --- import of public MiniMind checkpoints -----------------------------------------------------------------

LEGACY_FFN = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}


def legacy_key(key, config):
    """MiniMind v1's name for one of our keys, and the transform its RoPE layout needs (a test-side reference)."""
    if key == "model.embed_tokens.weight":
        return "tok_embeddings.weight", None
    if key == "model.norm.weight":
        return "norm.weight", None
    if key == "lm_head.weight":
        return "output.weight", None
    _, _, i, module, *rest = key.split(".")
    if module == "self_attn":
        proj = rest[0][0]
        heads = {"q": config.num_attention_heads, "k": config.num_key_value_heads}.get(proj)
        return f"layers.{i}.attention.w{proj}.weight", heads
    if module == "input_layernorm":
        return f"layers.{i}.attention_norm.weight", None
    if module == "post_attention_layernorm":
        return f"layers.{i}.ffn_norm.weight", None
    if rest[0] == "gate" and rest[1] == "weight":
        return f"layers.{i}.feed_forward.gate.weight", None
    if rest[0] == "experts":
        return f"layers.{i}.feed_forward.experts.{rest[1]}.{LEGACY_FFN[rest[2]]}.weight", None
    if rest[0] == "shared_experts":  # MiniMind v1 had one shared expert, not a list
        return f"layers.{i}.feed_forward.shared_experts.{LEGACY_FFN[rest[2]]}.weight", None
    return f"layers.{i}.feed_forward.{LEGACY_FFN[rest[0]]}.weight", None


def minimind_state_dict(model, scheme):
    """The state dict the public MiniMind project would save for `model`: fp16, under its names."""
    state = {k: v.detach().half() for k, v in model.state_dict().items()}
    if scheme == "current":
        return {f"_orig_mod.{k}": v for k, v in state.items()}  # a compiled model's prefix
    legacy = {}
    for key, value in state.items():
        name, heads = legacy_key(key, model.config)
        legacy[name] = to_llama_cpp_rope(value, heads) if heads else value
    legacy["layers.0.attention.mask"] = torch.full((1, 1, 8, 8), float("-inf")).triu(1)  # a saved buffer
    return {f"module.{k}": v for k, v in legacy.items()}  # a DDP prefix


@pytest.mark.parametrize("scheme", ["current", "legacy"])
@pytest.mark.parametrize("moe", [False, True])
def test_import_minimind_checkpoint_gives_identical_logits(tmp_path, scheme, moe, capsys):
    config = tiny(num_attention_heads=8, use_moe=moe, n_routed_experts=4, n_shared_experts=1,
                  num_experts_per_tok=2)
    model = random_model(config)
    torch.save(minimind_state_dict(model, scheme), tmp_path / "minimind.pth")
    run("import", tmp_path / "minimind.pth", "--out", tmp_path / "imported")
    assert {"current": "MiniMind 2", "legacy": "MiniMind v1"}[scheme] + " checkpoint" in capsys.readouterr().out
    imported, _ = load_model(str(tmp_path / "imported"))
    assert imported.config.use_moe == moe and imported.config.num_key_value_heads == 2
    reference = MiniMindForCausalLM(config).eval()
    reference.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    ids = torch.randint(0, 6400, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(imported(ids).logits, reference(ids).logits)
    assert MiniMindForCausalLM.from_pretrained(str(tmp_path / "imported")).config.hidden_size == 64


def test_import_uses_config_and_tokenizer_when_given(tmp_path):
    config = tiny(num_attention_heads=8, rope_theta=1e4)
    model = random_model(config)
    torch.save(minimind_state_dict(model, "current"), tmp_path / "minimind.pth")
    config.save_pretrained(str(tmp_path / "cfg"))
    save_tokenizer(load_tokenizer(None), tmp_path / "tok")
    run("import", tmp_path / "minimind.pth", "--out", tmp_path / "a", "--config", tmp_path / "cfg" / "config.json",
        "--tokenizer", tmp_path / "tok")
    assert load_model(str(tmp_path / "a"))[0].config.rope_theta == 1e4
    run("import", tmp_path / "minimind.pth", "--out", tmp_path / "b", "--rope_theta", "1e4")
    assert load_model(str(tmp_path / "b"))[0].config.rope_theta == 1e4


def test_import_errors_name_the_key(tmp_path, capsys):
    model = random_model(tiny(num_attention_heads=8))
    state = minimind_state_dict(model, "current")

    def fails(state, *flags):
        torch.save(state, tmp_path / "x.pth")
        with pytest.raises(SystemExit):
            run("import", tmp_path / "x.pth", "--out", tmp_path / "out", *flags)
        return capsys.readouterr().err

    assert "model.layers.0.extra.weight" in fails({**state, "model.layers.0.extra.weight": torch.zeros(2)})
    err = fails({**state, "model.layers.0.self_attn.q_norm.weight": torch.ones(5)})  # MiniMind-3's key, wrong size
    assert "q_norm" in err and "head size 5" in err
    assert "--num_heads" in fails(state, "--num_heads", "5")
    bad = dict(state)
    bad["_orig_mod.model.layers.1.mlp.up_proj.weight"] = torch.zeros(3, 64)
    err = fails(bad)
    assert "model.layers.1.mlp.up_proj.weight" in err and "shape mismatch" in err and "x.pth" in err
    missing = {k: v for k, v in state.items() if "layers.1.mlp.down_proj" not in k}
    assert "model.layers.1.mlp.down_proj.weight" in fails(missing)
    assert not (tmp_path / "out").exists()
