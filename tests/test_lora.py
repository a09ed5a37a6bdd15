"""LoRA: the layer starts as the base, merging equals base + adapter, the adapter file holds only the adapter,
loading checks the base, and a `minimind lora` run trains the adapters alone."""

import copy
import json

import pytest
import torch
from helpers import save_model_dir, tiny_model
from safetensors.torch import load_file, save_file

from minimind import MiniMindForCausalLM
from minimind.cli.train import parse_args
from minimind.lora import (
    DEFAULT_TARGETS,
    LoRALinear,
    apply_lora,
    load_adapter,
    lora_modules,
    lora_state_dict,
    merge_lora,
    save_adapter,
)
from minimind.train.lora_finetune import run_lora


def stage_args(stage, argv):
    return parse_args(argv, command=stage)

RUN = ["--max_seq_len", "32", "--batch_size", "4", "--log_interval", "1", "--eval_interval", "0", "--eval_batches", "2",
       "--dtype", "fp32", "--save_steps", "0"]


pytestmark = pytest.mark.usefixtures("one_thread")


def randomize_adapters(model, seed=1):
    """B starts at zero (adapter = no-op); give it values so the tests see a real update."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_model_dir(tiny_model(), tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sft") / "chat.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(40):
            f.write(json.dumps({"conversations": [{"role": "user", "content": f"What is {i} plus one?"},
                                                  {"role": "assistant", "content": f"It is {i + 1}."}]}) + "\n")
    return path


def test_lora_linear_starts_as_its_base():
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 8)
    x = torch.randn(3, 5, 16)
    want = base(x)
    lora = LoRALinear(base, rank=4, alpha=8, dropout=0.1).eval()
    assert lora.lora_A.shape == (4, 16) and lora.lora_B.shape == (8, 4) and lora.scale == 2.0
    assert not lora.lora_B.any() and lora.lora_A.std() > 0  # B zero, A random
    assert torch.equal(lora(x), want)
    assert [n for n, p in lora.named_parameters() if p.requires_grad] == ["lora_A", "lora_B"]
    with torch.no_grad():
        lora.lora_B.fill_(0.5)
    expected = want + 2.0 * (x @ lora.lora_A.T @ lora.lora_B.T)  # y = xW^T + b + (alpha/r) x A^T B^T
    assert torch.allclose(lora(x), expected, atol=1e-5)


def test_apply_lora_wraps_the_targets_and_freezes_the_rest():
    model = tiny_model()
    names = set(model.state_dict())
    apply_lora(model, rank=4, alpha=8)
    assert len(lora_modules(model)) == len(DEFAULT_TARGETS) * 2  # 7 projections x 2 layers
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.rsplit(".", 1)[1] in ("lora_A", "lora_B") for n in trainable)
    assert names <= set(model.state_dict())  # the base weights keep their names (q_proj.weight ...)
    assert set(lora_state_dict(model)) == {n for n in model.state_dict() if "lora_" in n}

    model = apply_lora(tiny_model(), targets=["q_proj", "v_proj"])
    assert sorted({n.rsplit(".", 1)[1] for n in lora_modules(model)}) == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match="already has LoRA layers"):
        apply_lora(model)
    with pytest.raises(ValueError, match=r"LoRA targets qkv match no linear layer.*its linear layers are: .*q_proj"):
        apply_lora(tiny_model(), targets=["qkv"])
    with pytest.raises(ValueError, match="lm_head shares its weight with the token embedding"):
        apply_lora(tiny_model(), targets=["lm_head"])
    eval_model = tiny_model().eval()
    apply_lora(eval_model, dropout=0.5)
    assert not any(m.training for m in lora_modules(eval_model).values())  # an eval model stays in eval mode


def test_merged_model_gives_the_same_logits_as_base_plus_adapter(tmp_path):
    model = apply_lora(tiny_model(), rank=4, alpha=16, dropout=0.1).eval()
    randomize_adapters(model)
    ids = torch.randint(0, 6400, (2, 24))
    with torch.no_grad():
        adapted = model(ids).logits
        base = tiny_model()(ids).logits
    assert (adapted - base).abs().max() > 1e-3  # the adapter does something

    merged = merge_lora(copy.deepcopy(model))
    assert not lora_modules(merged) and all(type(m) is torch.nn.Linear for n, m in merged.named_modules()
                                            if n.endswith("_proj"))
    assert all(p.requires_grad for p in merged.parameters())
    assert set(merged.state_dict()) == set(tiny_model().state_dict())
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted, atol=1e-5)
    merged.save_pretrained(tmp_path)  # a normal MiniMind model again
    reloaded = MiniMindForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, adapted, atol=1e-5)


def test_adapter_file_round_trip_and_errors(tmp_path):
    model = apply_lora(tiny_model(), rank=4, alpha=8, dropout=0.0).eval()
    randomize_adapters(model)
    path = save_adapter(model, tmp_path, base_path="some/base")
    assert path == tmp_path / "adapter_model.safetensors"
    tensors = load_file(path)
    assert set(tensors) == {f"base_model.model.{k}.weight" for k in lora_state_dict(model)}  # PEFT's names
    assert len(tensors) == 2 * len(DEFAULT_TARGETS) * 2
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["base_model_name_or_path"]) == \
        ("LORA", 4, 8, "some/base")
    assert sorted(config["target_modules"]) == sorted(DEFAULT_TARGETS)

    ids = torch.randint(0, 6400, (1, 16))
    loaded = load_adapter(tiny_model(), tmp_path).eval()  # a fresh base + the adapter
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert torch.equal(load_adapter(tiny_model(), path)(ids).logits, loaded(ids).logits)  # the file itself works too

    with pytest.raises(ValueError, match=r"different base model \(hidden_size: adapter 32 vs model 64.*some/base"):
        load_adapter(tiny_model(hidden=64), tmp_path)
    save_file(load_file(path), path)  # no base summary in the metadata (as peft writes it): the shape check catches it
    with pytest.raises(ValueError, match=r"adapter does not fit this model\n  shape mismatch"):
        load_adapter(tiny_model(hidden=64), tmp_path)
    with pytest.raises(ValueError, match=r"adapts model\.layers\.1\.\S+, which is not a linear layer of the model"):
        load_adapter(tiny_model(num_hidden_layers=1), tmp_path)
    tied = {f"base_model.model.lm_head.lora_{x}.weight": torch.zeros(shape) for x, shape in (("A", (4, 32)),
                                                                                            ("B", (6400, 4)))}
    save_file({**load_file(path), **tied}, path)
    with pytest.raises(ValueError, match="adapts lm_head, which shares its weight with the token embedding"):
        load_adapter(tiny_model(), tmp_path)
    for field, value in (("use_dora", True), ("peft_type", "IA3"), ("bias", "all")):
        (tmp_path / "adapter_config.json").write_text(json.dumps({**config, field: value}))
        with pytest.raises(ValueError, match=f"{field if field != 'peft_type' else 'only LoRA adapters'}"):
            load_adapter(tiny_model(), tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"rank": 4}))
    with pytest.raises(ValueError, match="not a LoRA adapter config; expected PEFT's fields"):
        load_adapter(tiny_model(), tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_adapter(tiny_model(), tmp_path)
    with pytest.raises(FileNotFoundError, match="no adapter weights here"):
        load_adapter(tiny_model(), tmp_path / "nowhere")


def test_adapter_of_the_older_minimind_layout_still_loads(tmp_path):
    """Before PEFT's layout: keys "<module>.lora_A" without prefix or suffix, config rank / alpha / targets."""
    model = apply_lora(tiny_model(), rank=2, alpha=6, targets=["q_proj", "down_proj"]).eval()
    randomize_adapters(model)
    save_file({k: v.contiguous() for k, v in lora_state_dict(model).items()}, tmp_path / "adapter_model.safetensors",
              metadata={"format": "minimind-lora"})
    (tmp_path / "adapter_config.json").write_text(json.dumps({
        "format": "minimind-lora", "rank": 2, "alpha": 6, "dropout": 0.0, "targets": ["down_proj", "q_proj"],
        "base_model": {"hidden_size": 32}, "base_model_path": None}))
    ids = torch.randint(0, 6400, (1, 12))
    loaded = load_adapter(tiny_model(), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    with pytest.raises(ValueError, match="different base model"):
        load_adapter(tiny_model(hidden=64), tmp_path)


def test_lora_run_trains_only_the_adapter_and_merges(base_dir, sft_file, tmp_path, capsys):
    out = tmp_path / "lora"
    run_lora(stage_args("lora", [*RUN, "--pretrained_path", str(base_dir), "--data", str(sft_file), "--max_steps", "4",
                                 "--learning_rate", "1e-2", "--output_dir", str(out), "--merge"]))
    assert "LoRA adapter saved to" in capsys.readouterr().out
    base = tiny_model().state_dict()
    trained = torch.load(out / "training_state.pt", weights_only=True)["model"]
    assert all(torch.equal(trained[k], v) for k, v in base.items())  # the base did not move
    assert not (out / "adapter_config.json").exists()  # merged: the adapter has its own folder
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert set(adapter) == {f"base_model.model.{k}.weight" for k in trained if "lora_" in k}  # the adapter alone
    assert all(adapter[k].abs().max() > 0 for k in adapter if k.endswith("lora_B.weight"))  # no B is still zero
    assert (out / "adapter" / "tokenizer.json").is_file() and (out / "adapter" / "adapter_config.json").is_file()
    # --merge wrote a normal model dir: it equals base + adapter
    ids = torch.randint(0, 6400, (2, 20))
    merged = MiniMindForCausalLM.from_pretrained(out).eval()
    adapted = load_adapter(MiniMindForCausalLM.from_pretrained(base_dir), out / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-5)


def test_lora_needs_a_base_model(tmp_path):
    with pytest.raises(ValueError, match="--pretrained_path is required for lora"):
        run_lora(stage_args("lora", [*RUN, "--output_dir", str(tmp_path)]))


# --- PEFT, both ways, on the Hugging Face (Llama) export -------------------------------------------------------

@pytest.fixture(scope="module")
def exported(base_dir, tmp_path_factory):
    from minimind.export import export

    return export(str(base_dir), "hf", str(tmp_path_factory.mktemp("hf") / "llama"))


def test_peft_loads_our_adapter_on_the_llama_export(base_dir, exported, tmp_path):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    model = apply_lora(MiniMindForCausalLM.from_pretrained(base_dir), rank=4, alpha=8,
                       targets=["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]).eval()
    randomize_adapters(model, seed=3)
    save_adapter(model, tmp_path, base_path=str(exported))
    ids = torch.randint(0, 6400, (2, 20))
    theirs = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(exported), tmp_path).eval()
    base = LlamaForCausalLM.from_pretrained(exported).eval()
    with torch.no_grad():
        ours, peft_logits, base_logits = model(ids).logits, theirs(ids).logits, base(ids).logits
    assert (ours - base_logits).abs().max() > 1e-2  # the adapter does something
    assert (peft_logits - ours).abs().max() < 1e-4


def test_adapter_peft_trained_on_the_export_loads_with_adapter(base_dir, exported, tmp_path):
    """An adapter peft made and trained on the exported Llama: rsLoRA, a per-module rank and alpha, one layer only."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    from minimind.checkpoint import load_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "up_proj", "down_proj"],
                        use_rslora=True, rank_pattern={"down_proj": 2}, alpha_pattern={"up_proj": 3},
                        layers_to_transform=[1], lora_dropout=0.0, task_type="CAUSAL_LM")
    peft_model = get_peft_model(LlamaForCausalLM.from_pretrained(exported), config)
    opt = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 6400, (2, 16))
    for _ in range(3):
        peft_model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    peft_model.save_pretrained(tmp_path / "peft")
    model, _ = load_model(str(base_dir), adapter=str(tmp_path / "peft"))
    assert sorted(lora_modules(model)) == ["model.layers.1.mlp.down_proj", "model.layers.1.mlp.up_proj",
                                           "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.q_proj"]
    assert lora_modules(model)["model.layers.1.mlp.down_proj"].rank == 2
    test_ids = torch.randint(0, 6400, (2, 20))
    with torch.no_grad():
        theirs = peft_model.eval()(test_ids).logits
        ours = model(test_ids).logits
        base = tiny_model()(test_ids).logits
    assert (theirs - base).abs().max() > 1e-2  # training moved it
    assert (ours - theirs).abs().max() < 1e-4
