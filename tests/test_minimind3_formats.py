"""MiniMind-3's published data formats (the public project's dataset/lm_dataset.py and trainer/*.py) train here
unchanged, with MiniMind's meaning: pretraining text, SFT with thinking and with tools (sft_t2t), DPO pairs, RLAIF
prompts (rlaif.jsonl) for GRPO, agent RL prompts with a gt list (agent_rl.jsonl), its data options
(add_system_ratio, empty_think_ratio, thinking_ratio), its chat template (open_thinking, an empty thinking block in
every turn) and its LoRA files. Each file below is a few lines in MiniMind's exact shape, trained a few steps on a
tiny model without conversion."""

import json
import re

import pytest
import torch
from helpers import save_model_dir, tiny_model

from minimind import MiniMindForCausalLM
from minimind.cli import main
from minimind.data.datasets import DPODataset, SFTDataset
from minimind.data.files import DataError
from minimind.data.messages import (
    EMPTY_THINK,
    SYSTEM_PROMPTS,
    Augment,
    encode_chat,
    parse_conversation,
    prompt_text,
)
from minimind.data.tasks import PromptDataset
from minimind.tokenizer import load_tokenizer

# A chat template that renders as MiniMind-3's (the public project's model/tokenizer_config.json; its tools
# preamble shortened): every assistant turn opens with a thinking block, empty when there is no thinking; the
# generation prompt writes an empty block, or opens one with `open_thinking`; tools go into the system turn.
MINIMIND3_TEMPLATE = (
    "{%- set first_system = messages and messages[0].role == 'system' %}"
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if first_system %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}"
    "{%- elif first_system %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for m in messages %}"
    "{%- set content = m.content if m.content is string else '' %}"
    "{%- if m.role == 'user' or (m.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + m.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- elif m.role == 'assistant' %}"
    "{%- set reasoning = m.reasoning_content if m.reasoning_content is string else '' %}"
    "{%- if not reasoning and '</think>' in content %}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1] %}"
    "{%- set content = content.split('</think>')[-1] %}{%- endif %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
    "{%- for call in m.tool_calls or [] %}"
    "{%- if not loop.first or content %}{{- '\\n' }}{%- endif %}"
    "{%- set fn = call.function if call.function is defined else call %}"
    "{{- '<tool_call>\\n{\"name\": \"' + fn.name + '\", \"arguments\": ' }}"
    "{{- fn.arguments if fn.arguments is string else fn.arguments | tojson }}{{- '}\\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif m.role == 'tool' %}"
    "{%- if loop.first or loop.previtem.role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' }}"
    "{%- if loop.last or loop.nextitem.role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if open_thinking is defined and open_thinking is true %}{{- '<think>\\n' }}"
    "{%- else %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)

TRANSLATE = {"type": "function", "function": {"name": "translate_text", "description": "将文本翻译成目标语言",
                                              "parameters": {"type": "object", "properties": {
                                                  "text": {"type": "string"}, "target_language": {"type": "string"}},
                                                  "required": ["text", "target_language"]}}}
CALCULATE = {"type": "function", "function": {"name": "calculate_math", "description": "计算数学表达式",
                                              "parameters": {"type": "object", "properties": {
                                                  "expression": {"type": "string"}}, "required": ["expression"]}}}
RUN = ["--batch_size", "2", "--max_steps", "2", "--eval_interval", "0", "--eval_batches", "1", "--dtype", "fp32",
       "--save_steps", "0", "--learning_rate", "1e-2", "--weight_decay", "0", "--warmup_steps", "0"]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def minimind3_tokenizer():
    tok = load_tokenizer()
    tok.chat_template = MINIMIND3_TEMPLATE
    return tok


def learnt(tok, ids, labels) -> str:
    return tok.decode([i for i, x in zip(ids, labels) if x != -100])


def moved(out, base) -> bool:
    """Whether the weights saved in `out` differ from those of `base` (weight decay off: only a gradient moves
    them)."""
    trained, start = MiniMindForCausalLM.from_pretrained(out), MiniMindForCausalLM.from_pretrained(base)
    return any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values()))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_model_dir(tiny_model(max_position_embeddings=512), tmp_path_factory.mktemp("mm3") / "base")


# --- pretraining, SFT, DPO -----------------------------------------------------------------------------------------

def test_pretrain_text_lines_train(base, tmp_path, one_thread):
    data = write_jsonl(tmp_path / "pretrain_t2t_mini.jsonl",
                       [{"text": f"清晨的阳光洒进房间，第{i}页书被风轻轻翻动。Transformer models read text {i}."}
                        for i in range(24)])
    out = tmp_path / "out"
    main(["train", "--pretrained_path", str(base), "--data", str(data), "--max_seq_len", "32", *RUN,
          "--output_dir", str(out)])
    assert moved(out, base)


REASONING = [
    {"conversations": [{"role": "user", "content": f"{i} 加 1 等于几？"},
                       {"role": "assistant", "content": f"等于 {i + 1}。", "reasoning_content": f"{i} 再加一。"}]}
    for i in range(4)] + [
    {"conversations": [{"role": "user", "content": "What is 2 plus 2?"},
                       {"role": "assistant", "content": "<think>\nTwo and two.\n</think>\n\nIt is 4."},
                       {"role": "user", "content": "And 3 plus 3?"},
                       {"role": "assistant", "content": "It is 6."}]}]


def test_sft_with_reasoning_trains_with_either_template(base, tmp_path, one_thread):
    """reasoning_content and inline <think> are learnt with minimind's template and with MiniMind-3's (which writes
    an empty block into every prompt and turn, and which the turn locator used to refuse)."""
    data = write_jsonl(tmp_path / "sft_t2t_mini.jsonl", REASONING)
    records = [parse_conversation(r, "x") for r in REASONING]
    ours, theirs = load_tokenizer(), minimind3_tokenizer()
    ids, labels = encode_chat(ours, records[0], 256)
    assert learnt(ours, ids, labels) == "<think>\n0 再加一。\n</think>\n\n等于 1。<|im_end|>"
    ids, labels = encode_chat(theirs, records[-1], 256)
    assert learnt(theirs, ids, labels) == ("<think>\nTwo and two.\n</think>\n\nIt is 4.<|im_end|>"
                                           "<think>\n\n</think>\n\nIt is 6.<|im_end|>")  # as MiniMind labels them
    assert "<|im_start|>assistant\n<think>\nTwo and two.\n</think>\n\nIt is 4." in theirs.decode(ids)
    out = tmp_path / "out"
    main(["train", "--stage", "sft", "--pretrained_path", str(base), "--data", str(data), "--max_seq_len", "96",
          *RUN, "--output_dir", str(out)])
    assert moved(out, base)


TOOL_SFT = [
    {"conversations": [  # sft_t2t's shape: tools on the system message as JSON text, tool_calls as JSON text
        {"role": "system", "content": "# Tools ...", "tools": json.dumps([TRANSLATE], ensure_ascii=False)},
        {"role": "user", "content": "把'你好世界'翻译成english"},
        {"role": "assistant", "content": "",
         "tool_calls": '[{"name":"translate_text","arguments":{"text":"你好世界","target_language":"english"}}]'},
        {"role": "tool", "content": '{"translated_text":"Hello World"}'},
        {"role": "assistant", "content": "Hello World"}]},
    {"conversations": [  # tools as a list; null fields as MiniMind's loader fills them in
        {"role": "system", "content": "# Tools ...", "tools": [CALCULATE], "tool_calls": None},
        {"role": "user", "content": "帮我算一下 256 乘以 37 等于多少", "reasoning_content": None, "tools": None},
        {"role": "assistant", "content": "",
         "tool_calls": '[{"name":"calculate_math","arguments":{"expression":"256 * 37"}}]'},
        {"role": "tool", "content": '{"result":"9472"}'},
        {"role": "assistant", "content": "256 乘以 37 等于 9472。"}]},
]


def test_sft_with_tools_renders_the_schema_and_trains(base, tmp_path, one_thread):
    data = write_jsonl(tmp_path / "sft_t2t.jsonl", TOOL_SFT * 2)
    ds = SFTDataset(str(data), load_tokenizer(), 512)
    tok = load_tokenizer()
    for item, fn in zip(ds, ("translate_text", "calculate_math")):
        ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
        text = tok.decode(ids)
        schema = json.dumps(TRANSLATE if fn == "translate_text" else CALCULATE, ensure_ascii=False)
        assert text.startswith(f"<|im_start|>system\n# Tools ...\n\n# Tools\n<tools>\n{schema}\n</tools>")
        assert schema not in learnt(tok, ids, labels)  # the schema is read, never learnt
        assert f'<tool_call>\n{{"name": "{fn}", "arguments": {{' in learnt(tok, ids, labels)
    theirs = minimind3_tokenizer()  # MiniMind-3's template gets the same tools
    ids, labels = encode_chat(theirs, ds.records[0], 512)
    assert f"<tools>\n{json.dumps(TRANSLATE, ensure_ascii=False)}\n</tools>" in theirs.decode(ids)
    assert learnt(theirs, ids, labels).startswith('<think>\n\n</think>\n\n<tool_call>\n{"name": "translate_text"')
    out = tmp_path / "out"
    main(["train", "--stage", "sft", "--pretrained_path", str(base), "--data", str(data), "--max_seq_len", "512",
          *RUN, "--output_dir", str(out)])
    assert moved(out, base)


def test_dpo_pairs_train(base, tmp_path, one_thread):
    pairs = [{"chosen": [{"content": f"{i} 的下一个数是几？", "role": "user"},
                         {"content": f"是 {i + 1}。", "role": "assistant"}],
              "rejected": [{"content": f"{i} 的下一个数是几？", "role": "user"},
                           {"content": "不知道。", "role": "assistant"}]} for i in range(6)]
    data = write_jsonl(tmp_path / "dpo.jsonl", pairs)
    item = DPODataset(str(data), load_tokenizer(), 64)[0]
    assert learnt(load_tokenizer(), item["chosen_input_ids"].tolist(), item["chosen_labels"].tolist()) == \
        "是 1。<|im_end|>"
    out = tmp_path / "out"
    main(["dpo", "--pretrained_path", str(base), "--data", str(data), "--max_seq_len", "64", *RUN,
          "--output_dir", str(out)])
    assert moved(out, base)


# --- RL prompts ------------------------------------------------------------------------------------------------------

RLAIF = [{"conversations": [{"role": "user", "content": f"请解释一下什么是第{i}种光合作用？"},
                            {"role": "assistant", "content": "无" if i % 2 else ""}]} for i in range(8)]


def test_rlaif_prompts_drop_the_placeholder_and_train_grpo_and_ppo(base, tmp_path, one_thread):
    data = write_jsonl(tmp_path / "rlaif.jsonl", RLAIF)
    tok = load_tokenizer()
    ds = PromptDataset(str(data), tok, 200)
    assert [m["role"] for m in ds.records[1]["messages"]] == ["user"]  # the placeholder "无" dropped
    assert tok.decode(ds[1]["prompt_ids"]) == ("<|im_start|>user\n请解释一下什么是第1种光合作用？<|im_end|>\n"
                                               "<|im_start|>assistant\n")
    out = tmp_path / "out"
    main(["grpo", "--pretrained_path", str(base), "--data", str(data), "--max_seq_len", "96", "--max_new_tokens",
          "6", "--num_generations", "4", "--beta", "0", *RUN, "--output_dir", str(out)])
    # no "answer" field: the default reward (numeric) gives way to MiniMind's rule-based terms
    assert json.loads((out / "args.json").read_text())["reward"] == ["length:20-800", "repetition"]
    assert moved(out, base)
    main(["ppo", "--pretrained_path", str(base), "--data", str(data), "--max_seq_len", "96", "--max_new_tokens",
          "6", "--beta", "0", *RUN, "--output_dir", str(tmp_path / "ppo")])
    assert moved(tmp_path / "ppo", base)
    from minimind.cli.train import parse_args
    from minimind.train.rl import run_grpo

    with pytest.raises(ValueError, match="--reward numeric compares with each prompt's \"answer\" field"):
        run_grpo(parse_args(["--pretrained_path", str(base), "--data", str(data), "--reward", "numeric", *RUN,
                             "--output_dir", str(tmp_path / "bad")], command="grpo"))


AGENT_RL = [{"conversations": [{"role": "system", "content": "", "tools": json.dumps([CALCULATE], ensure_ascii=False)},
                               {"role": "user", "content": f"帮我算一下 12 乘以 {i} 等于多少"},
                               {"role": "assistant", "content": ""}],
             "gt": [str(12 * i)]} for i in range(1, 7)]


def test_agent_rl_offers_its_tools_runs_them_and_rewards_the_gt(base, tmp_path, one_thread):
    """agent_rl.jsonl: the system message's tools are the prompt's (rendered; only they may be called; MiniMind's
    calculate_math runs offline), the placeholder is dropped, the gt list scores the final answer, and
    `minimind agent` trains on it with gt as its reward."""
    from types import SimpleNamespace

    from minimind.train.agent import AgentSteps, run_offline
    from minimind.train.config import build_config
    from minimind.train.rewards import Rewards, load_reward

    data = write_jsonl(tmp_path / "agent_rl.jsonl", AGENT_RL)
    tok = load_tokenizer()
    ds = PromptDataset(str(data), tok, 400, tools=[{"type": "function", "function": {"name": "calculator"}}])
    prompt = tok.decode(ds[0]["prompt_ids"])
    assert json.dumps(CALCULATE, ensure_ascii=False) in prompt and '"calculator"' not in prompt
    assert prompt.endswith("帮我算一下 12 乘以 1 等于多少<|im_end|>\n<|im_start|>assistant\n")
    gt = load_reward("gt")
    assert gt("q", "<think>12 x 7</think>12 乘以 7 等于 84。", gt=["84"]) == 1.0
    assert gt("q", "等于 184。", gt=["84"]) == 0.0 and gt("q", "Hello world", gt=["hello World", "x"]) == 0.5

    assert run_offline("calculate_math", {"expression": "2^10 − 24"}) == '{"result": "1000"}'  # MiniMind's ^, −
    script = {"12 乘以 1": ['<tool_call>\n{"name": "calculate_math", "arguments": {"expression": "12*1"}}\n'
                            '</tool_call>', "It is 12."],
              "12 乘以 2": ['<tool_call>\n{"name": "calculator", "arguments": {"expression": "12*2"}}\n</tool_call>',
                            "It is 25."]}

    def scripted(policy, prompts, G, n, eos, temperature, generator, full_length):
        comps = []
        for ids in prompts:  # the row from its question, the turn from the tool results so far
            text = tok.decode(ids)
            turns = next(v for k, v in script.items() if k in text)
            comps.append(tok.encode(turns[text.count("<tool_response>")], add_special_tokens=False) + [eos])
        width = max(map(len, comps))
        mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in comps])
        return SimpleNamespace(completions=comps, engine_logps=-mask.float(), completion_mask=mask)

    steps = AgentSteps(build_config("agent", {"max_seq_len": 512}), tok, Rewards(["gt", "tool_call"]))
    steps.generate = scripted
    _, texts, rows = steps.rollout(tiny_model(), [ds[0], ds[1]], 1, 1.0, [0, 1])
    assert rows[0]["tool_calls"][0]["result"] == '{"result": "12"}'  # MiniMind's result shape
    assert rows[1]["tool_calls"][0]["result"].startswith("error: unknown tool 'calculator'; the tools are "
                                                         "calculate_math")
    assert texts == ["It is 12.", "It is 25."]
    assert steps.rewards(rows, texts) == [2.0, 0.0]  # right, its call ran; wrong (gt 24), its call refused

    out = tmp_path / "out"
    main(["agent", "--pretrained_path", str(base), "--data", str(data), "--max_seq_len", "400", "--max_new_tokens",
          "6", "--num_generations", "2", "--max_turns", "2", "--beta", "0", *RUN, "--output_dir", str(out)])
    assert json.loads((out / "args.json").read_text())["reward"] == ["gt", "tool_call=0.2"]
    assert (out / "model_final.pth").is_file()


# --- MiniMind's data options and its template -------------------------------------------------------------------------

def test_add_system_ratio_empty_think_ratio_and_thinking_ratio(tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", REASONING * 8 + TOOL_SFT)
    tok = minimind3_tokenizer()

    def system_prompted(ratio, seed):
        ds = SFTDataset(str(data), tok, 512, augment=Augment(add_system_ratio=ratio, seed=seed))
        return [tok.decode(item["input_ids"].tolist()).partition("<|im_end|>")[0] for item in ds]

    first = [text.startswith("<|im_start|>system\n") for text in system_prompted(0.5, 1)]
    assert first == [text.startswith("<|im_start|>system\n") for text in system_prompted(0.5, 1)]  # the seed's
    assert first != [text.startswith("<|im_start|>system\n") for text in system_prompted(0.5, 2)]
    assert 8 <= sum(first[:40]) <= 32
    every = system_prompted(1.0, 1)
    assert all(text.startswith("<|im_start|>system\n") for text in every[:40])
    assert {text.split("\n")[1] for text in every[:40]} <= set(SYSTEM_PROMPTS)
    assert all(text.startswith("<|im_start|>system\n# Tools ...\n\n") for text in every[40:])  # tools: untouched

    def empty_blocks(ratio):
        ds = SFTDataset(str(data), tok, 512, augment=Augment(empty_think_ratio=ratio, seed=0))
        return [tok.decode(item["input_ids"].tolist()).count(EMPTY_THINK) for item in ds]

    assert empty_blocks(1.0) == [0, 0, 0, 0, 1] * 8 + [2]  # one per turn without thinking (the last record: val)
    assert sum(empty_blocks(0.0)) == 0
    kept = empty_blocks(0.5)
    assert kept != empty_blocks(1.0) and set(kept) == {0, 1, 2} and 2 <= sum(kept[4::5]) <= 6
    item = SFTDataset(str(data), tok, 512, augment=Augment(empty_think_ratio=0.0))[4]
    assert learnt(tok, item["input_ids"].tolist(), item["labels"].tolist()) == \
        "<think>\nTwo and two.\n</think>\n\nIt is 4.<|im_end|>It is 6.<|im_end|>"

    prompts = write_jsonl(tmp_path / "rlaif.jsonl", RLAIF)
    for ratio, tail in ((1.0, "<think>\n"), (0.0, EMPTY_THINK)):
        for t in (tok, load_tokenizer()):  # MiniMind-3's template reads open_thinking, ours enable_thinking
            ds = PromptDataset(str(prompts), t, 200, augment=Augment(thinking_ratio=ratio))
            assert all(t.decode(x["prompt_ids"]).endswith(f"<|im_start|>assistant\n{tail}") for x in ds)

    def opened(seed):
        ds = PromptDataset(str(prompts), tok, 200, augment=Augment(thinking_ratio=0.5, seed=seed))
        return [tok.decode(x["prompt_ids"]).endswith("<think>\n") for x in ds]

    assert opened(3) == opened(3) and 1 <= sum(opened(3)) <= 6
    message = [{"role": "user", "content": "hi"}]
    assert prompt_text(tok, message, enable_thinking=True).endswith("assistant\n<think>\n")
    assert prompt_text(tok, message, enable_thinking=False).endswith("assistant\n" + EMPTY_THINK)

    from minimind.cli.train import parse_args

    config = parse_args(["--stage", "sft", "--add_system_ratio", "0.2", "--empty_think_ratio", "0.2"])
    assert (config.add_system_ratio, config.empty_think_ratio) == (0.2, 0.2)
    assert parse_args(["--thinking_ratio", "0.9"], command="grpo").thinking_ratio == 0.9
    with pytest.raises(ValueError, match="--add_system_ratio is a share between 0 and 1, got 2.0"):
        Augment(add_system_ratio=2.0)
    from minimind.train.setup import load_data

    with pytest.raises(ValueError, match="they need --stage sft"):
        load_data(parse_args(["--add_system_ratio", "0.2"]), tok)  # pretraining text has no conversations


def test_unknown_and_malformed_minimind_fields_name_file_line_and_field(tmp_path):
    tok = load_tokenizer()
    cases = [
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 1}],
         "conversations[1].weight is not supported"),
        ([{"role": "user", "content": "q", "tools": "[]"}, {"role": "assistant", "content": "a"}],
         "conversations[0].tools is not supported"),
        ([{"role": "system", "content": "", "tools": "[{not json"}, {"role": "user", "content": "q"},
          {"role": "assistant", "content": "a"}], "conversations[0].tools is not valid JSON"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": '[{"name": 1}]'}],
         "conversations[1].tool_calls[0].name is a number"),
    ]
    for conversation, message in cases:
        path = write_jsonl(tmp_path / "bad.jsonl", [TOOL_SFT[0], {"conversations": conversation}])
        with pytest.raises(DataError, match=re.escape(f"bad.jsonl:2: {message}")):
            SFTDataset(str(path), tok, 64)
    path = write_jsonl(tmp_path / "bad.jsonl", [{"conversations": [{"role": "assistant", "content": "x"}]}])
    with pytest.raises(DataError, match="bad.jsonl:1: the conversation must end with a user message"):
        PromptDataset(str(path), tok, 64)


# --- MiniMind's LoRA files -------------------------------------------------------------------------------------------

def test_minimind_lora_pth_loads_with_adapter(tmp_path):
    """A LoRA .pth as MiniMind's save_lora writes it (fp16 `<module>.lora.A.weight` / `.lora.B.weight` on the square
    linears, added with scale 1) gives the base plus B A; a file for another width is refused naming the shapes."""
    from minimind.checkpoint import load_model

    base_model = tiny_model()
    base = save_model_dir(base_model, tmp_path / "base")
    torch.manual_seed(1)
    state, delta = {}, {}
    for name, m in base_model.named_modules():
        if isinstance(m, torch.nn.Linear) and m.in_features == m.out_features:
            a, b = torch.randn(4, m.in_features) * 0.1, torch.randn(m.out_features, 4) * 0.1
            state[f"{name}.lora.A.weight"], state[f"{name}.lora.B.weight"] = a.half(), b.half()
            delta[f"{name}.weight"] = b.half().float() @ a.half().float()
    assert delta and all(".self_attn." in k for k in delta)
    torch.save(state, tmp_path / "lora_identity_32.pth")
    adapted = load_model(str(base), adapter=str(tmp_path / "lora_identity_32.pth"))[0].eval()
    merged = tiny_model().eval()
    with torch.no_grad():
        for k, d in delta.items():
            merged.get_parameter(k).add_(d)
        probe = torch.randint(3, 200, (1, 12))
        assert torch.allclose(adapted(probe).logits, merged(probe).logits, atol=1e-4)
        assert not torch.allclose(adapted(probe).logits, tiny_model().eval()(probe).logits, atol=1e-4)

    wide = {k: torch.zeros(v.shape[0], 64) if ".lora.A." in k else v for k, v in state.items()}
    torch.save(wide, tmp_path / "wide.pth")
    with pytest.raises(ValueError, match=r"does not fit this model[\s\S]*shape mismatch.*lora_A: file \(4, 64\) vs "
                                         r"model \(4, 32\)"):
        load_model(str(base), adapter=str(tmp_path / "wide.pth"))
    torch.save(base_model.state_dict(), tmp_path / "model.pth")
    with pytest.raises(ValueError, match="is not a MiniMind LoRA matrix"):
        load_model(str(base), adapter=str(tmp_path / "model.pth"))
