"""Generation: the cache against recomputation, batches against single prompts, Hugging Face parity, the sampling
filters on hand-made distributions, seeds, streaming text (Chinese, emoji), stop strings, eos, load_model and
`minimind generate`."""

import subprocess
import sys

import pytest
import torch
from helpers import varied
from transformers import GenerationConfig, GenerationMixin, LlamaForCausalLM

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.checkpoint import load_model
from minimind.cli import main
from minimind.export.hf import llama_config
from minimind.infer.generate import encode_prompts, generate, generate_text, sample, stream
from minimind.infer.sampling import apply_repetition_penalty, filter_logits, token_chooser
from minimind.infer.textstream import TextStream
from minimind.tokenizer import load_tokenizer, save_tokenizer

TEXT = "Hello, 世界! 你好🙂👍🏽 café 𝔘𝔫𝔦 — done."


def tiny(vocab_size=6400, **overrides):
    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                vocab_size=vocab_size, max_position_embeddings=256)
    return MiniMindConfig(**{**base, **overrides})


def make_model(config, seed=0):
    torch.manual_seed(seed)
    model = varied(MiniMindForCausalLM(config).eval())
    return model


@pytest.fixture(scope="module")
def model():
    return make_model(tiny())


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def prompts_batch(lengths=(3, 9, 14), vocab=6400, seed=1):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]
    T = max(lengths)
    ids = torch.tensor([[0] * (T - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    return rows, ids, mask


# --- the decode loop -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_greedy_with_cache_equals_without(moe):
    config = tiny(vocab_size=500, use_moe=moe, n_routed_experts=4, num_experts_per_tok=2)
    m = make_model(config)
    _, ids, mask = prompts_batch(vocab=500)
    for kw in (dict(), dict(attention_mask=mask)):
        x = ids if kw else ids[2:]  # unpadded: the longest row alone
        fast = generate(m, x, max_new_tokens=12, min_new_tokens=12, **kw)
        slow = generate(m, x, max_new_tokens=12, min_new_tokens=12, use_cache=False, **kw)
        assert torch.equal(fast, slow)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_batch_of_left_padded_prompts_equals_each_alone(model, penalty):
    rows, ids, mask = prompts_batch()
    batch = generate(model, ids, mask, max_new_tokens=10, min_new_tokens=10, repetition_penalty=penalty)
    T = ids.shape[1]
    for b, row in enumerate(rows):
        alone = generate(model, torch.tensor([row]), max_new_tokens=10, min_new_tokens=10,
                         repetition_penalty=penalty)
        assert batch[b, T:].tolist() == alone[0, len(row):].tolist()


def test_matches_hugging_face_llama_generate():
    m = make_model(tiny(vocab_size=500))
    llama = LlamaForCausalLM(llama_config(m.config)).eval()
    llama.load_state_dict(m.state_dict())
    _, ids, mask = prompts_batch(vocab=500)
    ours = m.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=None)
    theirs = llama.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=None,
                            pad_token_id=0)
    assert torch.equal(ours, theirs)
    # Hugging Face's own loop still runs on our model (its cache has the same `update` method).
    hf_loop = GenerationMixin.generate(m, ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                                       eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours, hf_loop)
    # one row: on a CPU the default path's steps are minimind's native step (`minimind.kernels.native`)
    one = ids[2:]
    assert torch.equal(m.generate(one, max_new_tokens=16, do_sample=False, eos_token_id=None),
                       llama.generate(one, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0))


def test_hugging_face_calling_convention(model):
    ids = torch.randint(3, 6400, (2, 5))
    out = model.generate(ids, max_new_tokens=4, eos_token_id=None)
    assert out.shape == (2, 9) and out.dtype == torch.long and torch.equal(out[:, :5], ids)
    assert model.generate(input_ids=ids, max_length=7, eos_token_id=None).shape == (2, 7)
    assert model.generate(ids, eos_token_id=None).shape == (2, 20)  # Hugging Face's default max_length
    config = GenerationConfig(max_new_tokens=3, do_sample=True, top_k=5)
    a = model.generate(ids, generation_config=config, seed=7, eos_token_id=None)
    assert a.shape == (2, 8) and torch.equal(a, model.generate(ids, generation_config=config, seed=7,
                                                               eos_token_id=None))
    assert model.generate(ids, max_new_tokens=2, do_sample=True, num_return_sequences=3, seed=0).shape[0] == 6
    with pytest.raises(TypeError, match="unsupported argument.*frobnicate"):
        model.generate(ids, max_new_tokens=2, frobnicate=True)
    with pytest.raises(ValueError, match="num_beams"):
        model.generate(ids, generation_config=GenerationConfig(num_beams=2, max_new_tokens=2))
    model.generate(ids, max_new_tokens=2, num_beams=1, output_scores=False)  # defaults are fine


def test_eos_ends_a_row_and_pads_the_rest(model):
    _, ids, mask = prompts_batch()
    free = generate(model, ids, mask, max_new_tokens=12, min_new_tokens=12)
    T = ids.shape[1]
    eos = int(free[0, T + 3])  # make row 0's 4th new token the eos
    out = generate(model, ids, mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=0)
    row0 = out[0, T:].tolist()
    first = row0.index(eos)
    assert first <= 3 and all(t == 0 for t in row0[first + 1:])
    for b in range(1, 3):  # other rows run on (until their own eos, if it comes)
        new = free[b, T:].tolist()
        n = new.index(eos) + 1 if eos in new else len(new)
        assert out[b, T:T + n].tolist() == new[:n]
    # checking for the end every 8 steps (as on a GPU) gives the same result
    assert torch.equal(out, generate(model, ids, mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=0,
                                     check_every=8))
    one = generate(model, ids[:1], mask[:1], max_new_tokens=12, eos_token_id=eos, check_every=8)
    assert one.shape[1] == T + first + 1 and int(one[0, -1]) == eos
    # min_new_tokens keeps eos away for that many steps
    assert eos not in generate(model, ids[:1], mask[:1], max_new_tokens=6, min_new_tokens=6,
                               eos_token_id=eos)[0, T:].tolist()


def test_sample_for_training_is_kept(model):
    ids = torch.randint(3, 6400, (2, 6))
    assert torch.equal(sample(model, ids, 5, temperature=0),
                       generate(model, ids, max_new_tokens=5, min_new_tokens=5))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(sample(model, ids, 5, temperature=0.8, top_k=20, generator=g1),
                       sample(model, ids, 5, temperature=0.8, top_k=20, generator=g2))


def test_clear_errors(model):
    with pytest.raises(ValueError, match="exceeds the model's context of 256"):
        generate(model, torch.ones(1, 200, dtype=torch.long), max_new_tokens=100)
    with pytest.raises(ValueError, match="pad the batch on the left"):
        generate(model, torch.ones(2, 4, dtype=torch.long), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]))
    with pytest.raises(ValueError, match="top_p"):
        generate(model, torch.ones(1, 4, dtype=torch.long), do_sample=True, top_p=1.5)
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, torch.ones(1, 4, dtype=torch.long), stop_strings=["x"])


# --- sampling ------------------------------------------------------------------------------------------------------

def test_top_k_and_top_p_keep_exactly_the_right_tokens():
    probs = torch.tensor([0.05, 0.5, 0.1, 0.2, 0.15])  # sorted: 1 (0.5), 3 (0.2), 4 (0.15), 2 (0.1), 0 (0.05)
    logits = probs.log()[None]

    def kept(**kw):
        return set(torch.isfinite(filter_logits(logits, **kw))[0].nonzero().flatten().tolist())

    assert kept(top_k=1) == {1}
    assert kept(top_k=2) == {1, 3}
    assert kept(top_k=4) == {1, 3, 4, 2}
    assert kept(top_p=0.3) == {1}  # 0.5 alone reaches 0.3
    assert kept(top_p=0.6) == {1, 3}  # 0.5 < 0.6, 0.5 + 0.2 >= 0.6
    assert kept(top_p=0.8) == {1, 3, 4}  # 0.7 < 0.8, 0.85 >= 0.8
    assert kept(top_p=0.9) == {1, 3, 4, 2}
    assert kept(top_p=1.0) == {0, 1, 2, 3, 4}
    # top-k first, then top-p over the renormalised rest: 0.5, 0.2, 0.15 / 0.85 = 0.588, 0.235, 0.176
    assert kept(top_k=3, top_p=0.8) == {1, 3}
    # and sampling never leaves the kept set
    choose = token_chooser(do_sample=True, top_k=3, top_p=0.8, generator=torch.Generator().manual_seed(0))
    draws = choose(logits.expand(500, -1).clone())  # 500 draws
    assert set(draws.tolist()) == {1, 3}


def test_repetition_penalty_as_hugging_face():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0, -1.0]]


def test_fixed_seed_reproduces_a_sample(model):
    ids = torch.randint(3, 6400, (2, 5))
    kw = dict(max_new_tokens=12, min_new_tokens=12, do_sample=True, temperature=1.0, top_p=0.95)
    a, b = generate(model, ids, seed=123, **kw), generate(model, ids, seed=123, **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, generate(model, ids, seed=124, **kw))


# --- text: streaming and stop strings -----------------------------------------------------------------------------

def test_text_stream_never_splits_a_character(tokenizer):
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # some tokens really hold part of a character
    s = TextStream(tokenizer)
    pieces = [s.push(i) for i in ids] + [s.finish()]
    assert "".join(pieces) == TEXT
    assert not any("\ufffd" in p for p in pieces)


def test_streamed_text_joined_equals_the_final_text(model, tokenizer):
    # A random model emits arbitrary byte tokens: broken characters, specials; the join must still be exact.
    prompt = "你好🙂"
    kw = dict(max_new_tokens=40, do_sample=True, seed=5, eos_token_id=[])
    pieces = list(stream(model, tokenizer, prompt, **kw))
    text = generate_text(model, tokenizer, [prompt], **kw)[0]
    ids, _ = encode_prompts(tokenizer, [prompt])
    out = generate(model, ids, max_new_tokens=40, do_sample=True, seed=5)
    assert "".join(pieces) == text == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert len(pieces) > 1


def test_stop_strings_stop_and_are_not_emitted(model, tokenizer):
    s = TextStream(tokenizer, stop_strings=["STOP"])
    pieces = [s.push(i) for i in tokenizer.encode("Hello world. ST", add_special_tokens=False)]
    assert "".join(pieces) == "Hello world. "  # "ST" may begin the stop string: held back
    pieces += [s.push(i) for i in tokenizer.encode("Ok STOP and more", add_special_tokens=False)]
    assert "".join(pieces) + s.finish() == "Hello world. STOk " and s.stopped
    s = TextStream(tokenizer, stop_strings=["xyz"])
    assert "".join([s.push(i) for i in tokenizer.encode("a xy", add_special_tokens=False)] + [s.finish()]) == "a xy"

    # With the model: a stop string taken from the middle of the free text cuts the text there.
    kw = dict(max_new_tokens=30, min_new_tokens=30)
    free = generate_text(model, tokenizer, ["In the beginning"], **kw)[0]
    stop = free[10:14]
    assert stop.strip() and "\ufffd" not in stop
    cut = generate_text(model, tokenizer, ["In the beginning"], stop_strings=[stop], **kw)[0]
    assert cut == free[:free.index(stop)] and stop not in cut
    # tokens out: the row ends once its text holds the stop string
    ids, _ = encode_prompts(tokenizer, ["In the beginning"])
    out = generate(model, ids, stop_strings=[stop], tokenizer=tokenizer, **kw)
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert stop in text and out.shape[1] < ids.shape[1] + 30


# --- load_model and the generate command ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model, tokenizer):
    out = tmp_path_factory.mktemp("model")
    model.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    torch.save(model.state_dict(), out / "model_final.pth")
    return out


def test_load_model_from_directory_and_weight_files(model_dir, model, tmp_path, caplog):
    ids = torch.randint(3, 6400, (1, 6))
    expected = model(ids).logits
    for spec in (model_dir, model_dir / "model.safetensors", model_dir / "model_final.pth"):
        m, tok = load_model(spec)
        assert not m.training and len(tok) == 6400
        assert torch.allclose(m(ids).logits, expected)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "w.pth").write_bytes((model_dir / "model_final.pth").read_bytes())
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        load_model(bare / "w.pth")
    m, _ = load_model(bare / "w.pth", config=model_dir / "config.json")  # shipped tokenizer, with a warning
    assert "shipped" in caplog.text
    m, _ = load_model(model_dir, dtype="bf16")
    assert m.lm_head.weight.dtype == torch.bfloat16


def test_load_model_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing: no such file or directory"):
        load_model(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a model directory"):
        load_model(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="notes.txt: not a model"):
        load_model(tmp_path / "notes.txt")


def test_generate_command(model_dir, model, tokenizer, capsys):
    main(["generate", str(model_dir), "--prompt", "In the beginning", "--temperature", "0", "--max_new_tokens", "12",
          "--device", "cpu"])
    expected = generate_text(model, tokenizer, ["In the beginning"], max_new_tokens=12)[0]
    assert capsys.readouterr().out == "In the beginning" + expected + "\n"
    main(["generate", str(model_dir), "--prompt", "In the beginning", "--temperature", "0", "--max_new_tokens", "12",
          "--stream", "--device", "cpu"])
    assert capsys.readouterr().out == "In the beginning" + expected + "\n"
    main(["generate", str(model_dir), "--prompt", "Hi", "--num_samples", "2", "--seed", "1", "--max_new_tokens", "5",
          "--device", "cpu"])
    out = capsys.readouterr().out
    assert out.count("--- sample") == 2


def test_generate_command_bad_model_is_one_clear_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "minimind", "generate", str(tmp_path / "nope"), "--prompt", "x"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nope: no such file or directory" in r.stderr


def test_load_model_applies_a_lora_adapter(model_dir, model, tmp_path):
    lora = pytest.importorskip("minimind.lora")
    adapted = lora.apply_lora(make_model(model.config), rank=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for m in lora.lora_modules(adapted).values():
            m.lora_B.normal_(0, 0.5)  # a non-zero update, so the adapter changes the output
    lora.save_adapter(adapted, tmp_path / "adapter")
    loaded, _ = load_model(model_dir, adapter=tmp_path / "adapter")
    ids = torch.randint(3, 6400, (1, 6))
    adapted.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, adapted(ids).logits, atol=1e-5)
        assert not torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-3)
    assert torch.equal(generate(loaded, ids, max_new_tokens=5), generate(adapted, ids, max_new_tokens=5))


def test_model_generate_streams_text(model, tokenizer):
    ids, _ = encode_prompts(tokenizer, ["你好🙂"])
    out = model.generate(ids, max_new_tokens=25, do_sample=True, seed=4)
    pieces = list(model.generate(ids, max_new_tokens=25, do_sample=True, seed=4, stream=True, tokenizer=tokenizer))
    assert "".join(pieces) == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    with pytest.raises(ValueError, match="tokenizer"):
        model.generate(ids, stream=True)


def test_hugging_face_text_streamer(model, tokenizer, capsys):
    from transformers import TextStreamer

    ids, _ = encode_prompts(tokenizer, ["In the beginning"])
    out = model.generate(ids, max_new_tokens=10, min_new_tokens=10, streamer=TextStreamer(tokenizer, skip_prompt=True))
    printed = capsys.readouterr().out
    assert printed.strip() == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


@pytest.mark.parametrize("int8", [False, True])
def test_compiled_decode_equals_eager(int8):
    """`compile=True` (torch.compile: the prefill, then every step as one fixed-shape graph)
    gives eager's greedy tokens, for fp32 and int8 weights, on a padded batch. The slowest test here (two compiles
    per case, ~15-20 s each on a CPU)."""
    from minimind.kernels.native import native_step
    from minimind.quantize import quantize_int8

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = make_model(tiny())
        model = quantize_int8(model) if int8 else model
        ids = torch.randint(3, 6400, (2, 7), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        mask[1, :3] = 0  # the second row is left-padded
        eager = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
        compiled = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, compile=True)
        # the prefill compiled: frozen, or not where the model also takes the native one-row step (engine.py)
        assert hasattr(model, "_minimind_compiled_forward_unfrozen" if native_step(model) else
                       "_minimind_compiled_forward") and torch.equal(compiled, eager)
        assert hasattr(model, "_minimind_compiled_step")  # the steps ran as one fixed-shape graph (engine.py)
    finally:
        torch.set_num_threads(threads)
