"""Import a checkpoint of the public MiniMind project (its `.pth` state dict) as a minimind model directory.

The public project has saved its weights under three generations of names and shapes, all mapped here:

- MiniMind-3 (minimind-3, minimind-3-moe; since April 2026): Qwen3's names, which are ours, with per-head query and
  key norms (`self_attn.q_norm`, `self_attn.k_norm`); the MoE has `mlp.gate.weight` and `mlp.experts.E.*`, top-1
  routing and no shared expert. The head size is read from q_norm, so the head count needs no flag.
- MiniMind 2: Hugging Face Llama names, which are ours: `model.embed_tokens`,
  `model.layers.N.self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`, norms, `lm_head`; MoE layers have
  `mlp.gate.weight`, `mlp.experts.E.*` and `mlp.shared_experts.S.*`.
- legacy (MiniMind v1): `tok_embeddings`, `layers.N.attention.w{q,k,v,o}`, `attention_norm`, `ffn_norm`,
  `feed_forward.w1/w3/w2` (gate/up/down), `norm`, `output`; MoE `feed_forward.gate.weight`,
  `feed_forward.experts.E.w*` and one `feed_forward.shared_experts.w*`. Its RoPE rotated adjacent pairs of
  a head (complex numbers, as Meta's Llama), so `wq`/`wk` rows are permuted into our half-split layout.

The config is read from the tensor shapes (vocabulary, width, layers, FFN width, key/value heads, experts);
what shapes cannot tell comes from flags with the generation's defaults: the head count (8; MiniMind-3's comes from
its shapes), the experts used per token (2; MiniMind-3: 1), the RoPE base (1e6) and the context length (32768), or
from a `--config` config.json (MiniMind's or ours).

    minimind import full_sft_512.pth --tokenizer minimind/model --out minimind-512
    minimind import full_sft_768.pth --tokenizer minimind/model --out minimind-3     # a minimind-3 checkpoint

The tokenizer matters: MiniMind's weights expect MiniMind's own tokenizer (`model/tokenizer.json` and
`tokenizer_config.json` in the public project), not the one minimind ships; its chat template (MiniMind-3's: Qwen3's,
with thinking and tools) comes with it and is what `minimind chat` then uses.
"""

import logging
import re
from pathlib import Path

import torch

from ..io import atomic_write, check_output
from .gguf import from_llama_cpp_rope as from_pair_rope

FFN = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}


BUFFERS = re.compile(r"(.*\.)?(pos_cis|freqs_cos|freqs_sin|rotary_emb\.inv_freq|attention\.mask)$")

SCHEMES = {"minimind3": "MiniMind-3", "current": "MiniMind 2", "legacy": "MiniMind v1"}  # scheme -> generation


def legacy_name(key: str) -> str | None:
    """Our name for a MiniMind v1 key, or None when the key is not one of its parameters."""
    fixed = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    if key in fixed:
        return fixed[key]
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", key)
    if not m:
        return None
    layer, rest = f"model.layers.{m.group(1)}", m.group(2)
    if m2 := re.fullmatch(r"attention\.w([qkvo])\.weight", rest):
        return f"{layer}.self_attn.{m2.group(1)}_proj.weight"
    if rest == "attention_norm.weight":
        return f"{layer}.input_layernorm.weight"
    if rest == "ffn_norm.weight":
        return f"{layer}.post_attention_layernorm.weight"
    if rest == "feed_forward.gate.weight":
        return f"{layer}.mlp.gate.weight"
    if m2 := re.fullmatch(r"feed_forward\.(w[123])\.weight", rest):
        return f"{layer}.mlp.{FFN[m2.group(1)]}.weight"
    if m2 := re.fullmatch(r"feed_forward\.experts\.(\d+)\.(w[123])\.weight", rest):
        return f"{layer}.mlp.experts.{m2.group(1)}.{FFN[m2.group(2)]}.weight"
    if m2 := re.fullmatch(r"feed_forward\.shared_experts\.(?:(\d+)\.)?(w[123])\.weight", rest):
        return f"{layer}.mlp.shared_experts.{m2.group(1) or 0}.{FFN[m2.group(2)]}.weight"
    return None


def current_name(key: str) -> str | None:
    """Our name for a MiniMind 2 or MiniMind-3 key (they are the same), or None when it is not one of our
    parameters."""
    pattern = (r"model\.embed_tokens\.weight|model\.norm\.weight|lm_head\.weight|model\.layers\.\d+\.("
               r"self_attn\.[qkvo]_proj|self_attn\.[qk]_norm|input_layernorm|post_attention_layernorm|mlp\.gate|"
               r"mlp\.(experts|shared_experts)\.\d+\.(gate|up|down)_proj|mlp\.(gate|up|down)_proj)\.weight")
    return key if re.fullmatch(pattern, key) else None


def rename(state: dict, source: str) -> tuple[dict, str]:
    """MiniMind's state dict under our names, and which scheme it used ("minimind3", "current" (MiniMind 2) or
    "legacy" (v1))."""
    state = {k: v for k, v in state.items() if not BUFFERS.fullmatch(k)}  # prefixes: stripped by read_state_dict
    legacy = "tok_embeddings.weight" in state or any(k.startswith("layers.") for k in state)
    qk_norm = any(k.endswith(("self_attn.q_norm.weight", "self_attn.k_norm.weight")) for k in state)
    scheme = "legacy" if legacy else "minimind3" if qk_norm else "current"
    to_ours = legacy_name if legacy else current_name
    renamed, unknown = {}, []
    for key, value in state.items():
        name = to_ours(key)
        if name is None:
            unknown.append(key)
        else:
            renamed[name] = value
    if unknown:
        raise ValueError(f"{source}: {len(unknown)} key(s) are not MiniMind parameters this importer knows: "
                         + ", ".join(unknown[:6]) + (" ..." if len(unknown) > 6 else "")
                         + f" (read as {SCHEMES[scheme]}'s naming); is this a MiniMind checkpoint?")
    if "model.embed_tokens.weight" not in renamed:
        raise ValueError(f"{source}: no token embedding ({'tok_embeddings' if legacy else 'model.embed_tokens'}"
                         ".weight); is this a MiniMind checkpoint?")
    return renamed, scheme


def infer_config(state: dict, source: str, num_heads: int | None = None, **fields):
    """A MiniMindConfig fitting the tensor shapes of `state` (our names); `fields` fill in what shapes cannot
    tell (num_experts_per_tok, rope_theta, max_position_embeddings, ...). A MiniMind-3 state dict (per-head q_norm)
    gives its head size, hence the head count, and takes MiniMind-3's defaults for the rest."""
    from ..config import MiniMindConfig

    vocab, hidden = state["model.embed_tokens.weight"].shape
    layers = 1 + max((int(k.split(".")[2]) for k in state if k.startswith("model.layers.")), default=-1)
    if layers == 0:
        raise ValueError(f"{source}: no transformer layers (model.layers.N.* / layers.N.*) in this checkpoint")

    def shape(key):
        if key not in state:
            raise ValueError(f"{source}: {key} is missing; the checkpoint is incomplete")
        return tuple(state[key].shape)

    minimind3 = "model.layers.0.self_attn.q_norm.weight" in state
    q_rows = shape("model.layers.0.self_attn.q_proj.weight")[0]
    if minimind3:
        head_dim = shape("model.layers.0.self_attn.q_norm.weight")[0]
        if q_rows % head_dim:
            raise ValueError(f"{source}: model.layers.0.self_attn.q_proj.weight has {q_rows} rows, not a multiple of "
                             f"the head size {head_dim} that self_attn.q_norm.weight gives")
        if num_heads is not None and num_heads != q_rows // head_dim:
            raise ValueError(f"{source}: --num_heads {num_heads} does not fit: the query projection has "
                             f"{q_rows} rows of heads of {head_dim} (q_norm), i.e. {q_rows // head_dim} heads")
        num_heads = q_rows // head_dim
    else:
        num_heads = num_heads or 8
        if hidden % num_heads:
            raise ValueError(f"{source}: hidden size {hidden} is not divisible by --num_heads {num_heads}; give the "
                             "checkpoint's head count with --num_heads")
        head_dim = hidden // num_heads
        if q_rows != hidden:
            raise ValueError(f"{source}: model.layers.0.self_attn.q_proj.weight has {q_rows} rows, not hidden size "
                             f"{hidden}; a MiniMind 2 attention has num_heads * head_dim == hidden_size")
    k_rows = shape("model.layers.0.self_attn.k_proj.weight")[0]
    if k_rows % head_dim:
        raise ValueError(f"{source}: model.layers.0.self_attn.k_proj.weight has {k_rows} rows, not a multiple of the "
                         f"head size {head_dim} (= {hidden} / --num_heads {num_heads}); check --num_heads")
    experts = {int(k.split(".")[5]) for k in state if k.startswith("model.layers.0.mlp.experts.")}
    shared = {int(k.split(".")[5]) for k in state if k.startswith("model.layers.0.mlp.shared_experts.")}
    ffn = "model.layers.0.mlp.experts.0.gate_proj.weight" if experts else "model.layers.0.mlp.gate_proj.weight"
    lm_head = state.get("lm_head.weight")
    tied = lm_head is None or torch.equal(lm_head, state["model.embed_tokens.weight"])
    inferred = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": num_heads,
                "num_key_value_heads": k_rows // head_dim, "vocab_size": vocab, "intermediate_size": shape(ffn)[0],
                "tie_word_embeddings": tied}
    if minimind3:  # qk_norm brings MiniMind-3's defaults for what shapes cannot tell (config.MINIMIND3_DEFAULTS)
        inferred.update(head_dim=head_dim, qk_norm=True)
    if experts:
        inferred.update(use_moe=True, n_routed_experts=len(experts), n_shared_experts=len(shared))
        if shared:  # all experts of a MiniMind 2 MoE share one width
            inferred["intermediate_size"] = shape("model.layers.0.mlp.shared_experts.0.gate_proj.weight")[0]
        inferred["moe_intermediate_size"] = shape(ffn)[0]
    return MiniMindConfig(**{**inferred, **fields})


def import_minimind(pth: str | Path, out: str | Path, config: str | None = None, tokenizer: str | None = None,
                    num_heads: int | None = None, force: bool = False, **fields) -> dict:
    """Convert a public MiniMind `.pth` into a minimind model directory at `out` (config.json, model.safetensors in
    fp32, tokenizer files), then load it back with `load_model` to check it. `config`: a config.json (MiniMind's or
    ours) to take the architecture from instead of inferring it; `fields` (num_experts_per_tok, rope_theta,
    max_position_embeddings, ...) override single config fields. Returns a summary dict."""
    from safetensors.torch import save_file

    from ..checkpoint import load_config, load_model, read_state_dict
    from ..io import check_fit
    from ..model import MiniMindForCausalLM
    from ..tokenizer import load_tokenizer, save_tokenizer

    pth = Path(pth)
    if pth.is_dir() or pth.suffix not in (".pth", ".pt"):
        raise ValueError(f"{pth}: expected a MiniMind .pth state dict file")
    out = check_output(out, force, "dir")
    source = str(pth)
    state, scheme = rename(read_state_dict(pth), source)
    fields = {k: v for k, v in fields.items() if v is not None}
    if config is not None:
        cfg = load_config(config)
        if num_heads is not None or fields:
            base = {k: v for k, v in cfg.to_dict().items()
                    if k not in ("model_type", "architectures", "transformers_version")}
            cfg = type(cfg)(**{**base, **({"num_attention_heads": num_heads} if num_heads else {}), **fields})
    else:
        cfg = infer_config(state, source, num_heads, **fields)
    if scheme == "legacy":  # adjacent-pair RoPE rows -> half-split rows, per head
        for key in list(state):
            if key.endswith("self_attn.q_proj.weight"):
                state[key] = from_pair_rope(state[key], cfg.num_attention_heads)
            elif key.endswith("self_attn.k_proj.weight"):
                state[key] = from_pair_rope(state[key], state[key].shape[0] // cfg.head_dim)
    if cfg.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    check_fit(state, MiniMindForCausalLM(cfg).state_dict(), f"{source}: the weights (under minimind's names) do not "
              "fit the architecture read from them", "the architecture came from the tensor shapes of layer 0 and "
              "the flags; pass --config with the checkpoint's config.json if it has one")
    if cfg.tie_word_embeddings:
        del state["lm_head.weight"]  # tied again on load
    state = {k: v.to(torch.float32).contiguous() for k, v in state.items()}

    if tokenizer is None and ((pth.parent / "tokenizer.json").is_file()):
        tokenizer = str(pth.parent)
    if tokenizer is None:
        logging.getLogger("minimind").warning(
            f"{pth}: no --tokenizer given; using minimind's shipped tokenizer, which is NOT MiniMind's: text will be "
            "wrong. Pass --tokenizer with the public MiniMind project's model/ folder (tokenizer.json, "
            "tokenizer_config.json)")
    tok = load_tokenizer(tokenizer)

    with atomic_write(out, directory=True) as tmp:
        cfg.save_pretrained(str(tmp))
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        save_tokenizer(tok, tmp)
        model, _ = load_model(str(tmp))  # the directory loads as any minimind model
    return {"scheme": scheme, "generation": SCHEMES[scheme], "parameters": sum(p.numel() for p in model.parameters()),
            "config": cfg, "out": out, "tokenizer": tokenizer or "minimind's shipped tokenizer"}
