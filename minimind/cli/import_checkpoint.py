"""`minimind import PTH`: a public MiniMind checkpoint as a minimind model directory (the description is
minimind/export/import_minimind.py's)."""

from . import docstring_of

DESCRIPTION = docstring_of("minimind.export.import_minimind")


def add_arguments(p):
    p.add_argument("pth", metavar="PTH", help="a public MiniMind state dict, e.g. full_sft_512.pth")
    p.add_argument("--out", required=True, help="the model directory to write")
    p.add_argument("--tokenizer", default=None, help="MiniMind's tokenizer folder (tokenizer.json, "
                                                     "tokenizer_config.json); default: one beside PTH, else the "
                                                     "shipped tokenizer, with a warning")
    p.add_argument("--config", default=None, help="a config.json (MiniMind's or ours) to take the architecture from "
                                                  "instead of inferring it from the tensor shapes")
    p.add_argument("--num_heads", type=int, default=None, help="attention heads, which MiniMind 2's shapes cannot tell "
                                                               "(default: 8, MiniMind's; MiniMind-3: from q_norm)")
    p.add_argument("--num_experts_per_tok", type=int, default=None, help="MoE: routed experts per token (default: 2; "
                                                                         "MiniMind-3: 1)")
    p.add_argument("--rope_theta", type=float, default=None, help="RoPE base (default: 1e6, MiniMind's)")
    p.add_argument("--max_position_embeddings", type=int, default=None, help="context length (default: 32768)")
    p.add_argument("--force", action="store_true", help="write into an existing non-empty --out directory")


def main(args):
    from ..export.import_minimind import import_minimind

    result = import_minimind(args.pth, args.out, config=args.config, tokenizer=args.tokenizer,
                             num_heads=args.num_heads, force=args.force, num_experts_per_tok=args.num_experts_per_tok,
                             rope_theta=args.rope_theta, max_position_embeddings=args.max_position_embeddings)
    c = result["config"]
    kind = (f"MoE ({c.n_routed_experts} experts, {c.num_experts_per_tok} per token, {c.n_shared_experts} shared)"
            if c.use_moe else "dense")
    print(f"imported {args.pth} ({result['generation']} checkpoint): {result['parameters'] / 1e6:.1f}M parameters, "
          f"{kind}, hidden {c.hidden_size}, {c.num_hidden_layers} layers, {c.num_attention_heads} heads / "
          f"{c.num_key_value_heads} key-value heads{' (QK-norm)' if c.qk_norm else ''}, vocab {c.vocab_size}; "
          f"tokenizer: {result['tokenizer']}; saved to {result['out']}")
