"""Reinforcement learning (`minimind grpo` / `ppo`): the losses against hand computations, rollouts through the decode
engine against the training forward, the rewards (built-ins, bad functions, a reward model), the built-in task, and
short CPU runs: reward rises, KL stays bounded with --beta, LoRA-only, exact resume after SIGKILL."""

import json
import math

import pytest
import torch
from helpers import kill_once_saved, save_model_dir, tiny_model

from minimind.cli.train import parse_args
from minimind.data.tasks import PromptDataset, arithmetic_problems, builtin_tasks
from minimind.tokenizer import load_tokenizer
from minimind.train.resume import STATE_FILE
from minimind.train.ppo import gae, ppo_loss, value_loss
from minimind.train.rewards import RewardError, Rewards, load_reward
from minimind.train.rl import group_advantages, grpo_loss, kl_k3, run_grpo
from minimind.train.rollout import forward_logps, generate_rollouts

pytestmark = pytest.mark.usefixtures("one_thread")

# --- losses by hand ------------------------------------------------------------------------------------------------


def test_group_advantages_by_hand():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0]), 4)
    std = math.sqrt(4 * 0.25 / 3)  # unbiased std of (1, 0, 0, 1)
    expected = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.5 / (std + 1e-4), 0, 0, 0, 0]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)
    assert group_advantages(torch.tensor([3.0, 1.0]), 2, scale=False).tolist() == [1.0, -1.0]  # Dr. GRPO


LOGPS = [[-1.0, -2.0, -0.5], [-0.3, -1.2, -9.0]]
OLD = [[-1.1, -1.5, -0.5], [-0.6, -1.2, -9.0]]
REF = [[-1.0, -2.5, -0.5], [-0.2, -1.0, -9.0]]
MASK = [[1, 1, 1], [1, 1, 0]]
ADV = [1.5, -0.5]


def _hand_grpo(loss_type, eps, eps_high, beta, norm, max_new):
    per_seq, tokens = [], []
    for i in range(2):
        row = []
        for t in range(3):
            if not MASK[i][t]:
                continue
            ratio = math.exp(LOGPS[i][t] - OLD[i][t])
            a = ADV[i]
            if loss_type == "grpo":
                pg = -min(ratio * a, min(max(ratio, 1 - eps), 1 + eps_high) * a)
            else:
                pg = -min(ratio, 1 + eps_high) * a * LOGPS[i][t]
            d = REF[i][t] - LOGPS[i][t]
            row.append(pg + beta * (math.exp(d) - d - 1))
        per_seq.append(row)
        tokens += row
    if norm == "token":
        return sum(tokens) / len(tokens)
    if norm == "sequence":
        return sum(sum(r) / len(r) for r in per_seq) / len(per_seq)
    return sum(tokens) / (2 * max_new)


@pytest.mark.parametrize("loss_type,eps_high,beta,norm", [
    ("grpo", 0.2, 0.0, "token"), ("grpo", 0.28, 0.1, "sequence"), ("cispo", 0.2, 0.04, "token"),
    ("cispo", 4.0, 0.0, "constant")])
def test_grpo_and_cispo_losses_equal_hand_computation(loss_type, eps_high, beta, norm):
    t = torch.tensor
    loss, metrics = grpo_loss(t(LOGPS), t(OLD), t(REF), t(ADV), t(MASK), beta, loss_type, 0.2, eps_high, norm, 4)
    assert float(loss) == pytest.approx(_hand_grpo(loss_type, 0.2, eps_high, beta, norm, 4), abs=1e-6)
    # which tokens the clip acts on: ratio exp(0.1)=1.105 (A>0, inside), exp(-0.5)=0.61 (A>0: the min keeps it),
    # exp(0.3)=1.35 (A<0: not clipped for grpo; above 1+eps for cispo's cap unless eps_high=4)
    expected_clipped = {"grpo": 0, "cispo": 0 if eps_high > 1 else 1}[loss_type]
    assert float(metrics["clip_frac"]) == pytest.approx(expected_clipped / 5)
    kl = sum(math.exp(REF[i][j] - LOGPS[i][j]) - (REF[i][j] - LOGPS[i][j]) - 1
             for i in range(2) for j in range(3) if MASK[i][j]) / 5
    assert float(metrics["kl"]) == pytest.approx(kl, abs=1e-6)


def test_cispo_gradient_flows_through_clipped_tokens():
    """CISPO's weight is detached and capped, but the token keeps its gradient: d loss / d logp = -w * A / n."""
    logps = torch.tensor([[0.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -1.0]])  # ratio e = 2.72 on token 0 (capped at 1.2), 1 on token 1
    loss, _ = grpo_loss(logps, old, None, torch.tensor([2.0]), torch.ones(1, 2), 0.0, "cispo", 0.2, 0.2)
    loss.backward()
    assert logps.grad[0].tolist() == pytest.approx([-1.2 * 2 / 2, -1.0 * 2 / 2], abs=1e-6)
    logps.grad = None
    loss, _ = grpo_loss(logps, old, None, torch.tensor([2.0]), torch.ones(1, 2), 0.0, "grpo", 0.2, 0.2)
    loss.backward()
    assert logps.grad[0, 0] == 0  # PPO-clip: a clipped token has no gradient


def test_kl_k3_is_zero_at_the_reference_and_positive_elsewhere():
    x = torch.tensor([-1.0, -2.0])
    assert kl_k3(x, x).tolist() == [0.0, 0.0]
    assert (kl_k3(x, x + torch.tensor([0.5, -0.5])) > 0).all()


def test_gae_and_ppo_loss_equal_hand_computation():
    # one row: a prompt token (mask 0) then 3 completion tokens
    rewards = torch.tensor([[0.0, 0.1, -0.2, 1.0]])
    values = torch.tensor([[9.0, 0.5, 0.4, 0.8]])
    mask = torch.tensor([[0, 1, 1, 1]])
    gamma, lam = 0.9, 0.8
    d3 = 1.0 - 0.8
    d2 = -0.2 + gamma * 0.8 - 0.4
    d1 = 0.1 + gamma * 0.4 - 0.5
    a3 = d3
    a2 = d2 + gamma * lam * a3
    a1 = d1 + gamma * lam * a2
    adv, ret = gae(rewards, values, mask, gamma, lam)
    assert adv.tolist()[0] == pytest.approx([0.0, a1, a2, a3], abs=1e-6)
    assert ret.tolist()[0] == pytest.approx([0.0, a1 + 0.5, a2 + 0.4, a3 + 0.8], abs=1e-6)

    new_values = torch.tensor([[0.0, 0.9, 0.1, 0.8]])
    vl = value_loss(new_values, values, ret, 0.2)
    # token 1: V moved +0.4, clipped to +0.2: the max of both squared errors
    r1 = a1 + 0.5
    assert float(vl[0, 1]) == pytest.approx(0.5 * max((0.9 - r1) ** 2, (0.7 - r1) ** 2), abs=1e-6)
    logps = torch.tensor([[0.0, -1.0, -1.0, -1.0]])
    old = torch.tensor([[0.0, -1.0, -1.5, -1.0]])
    advs = torch.tensor([[0.0, 1.0, 1.0, -1.0]])
    loss, _ = ppo_loss(logps, old, advs, new_values, values, ret, mask, vf_coef=0.5, value_clip=0.2, eps=0.2)
    pg = [-1.0, -min(math.exp(0.5) * 1.0, 1.2), 1.0]  # ratios 1, e^0.5 (clipped at 1.2), 1
    expected = sum(pg) / 3 + 0.5 * float(vl[0, 1:].sum()) / 3
    assert float(loss) == pytest.approx(expected, abs=1e-6)


# --- rollouts ------------------------------------------------------------------------------------------------------

def test_rollouts_through_the_engine_match_the_training_forward():
    """All samples of all prompts in one batch; each row = its prompt + completion (cut after eos); the engine's
    log-probs equal the training forward's in fp32."""
    model = tiny_model(hidden=64).eval()
    prompts = [[1, 50, 60, 70], [1, 80], [1, 90, 91]]
    g = torch.Generator().manual_seed(0)
    ro = generate_rollouts(model, prompts, 3, 6, eos_token_id=2, temperature=1.0, generator=g)
    assert ro.input_ids.shape[0] == 9
    for i in range(9):
        p = prompts[i // 3]
        n = len(ro.completions[i])
        assert ro.input_ids[i, :len(p)].tolist() == p
        assert ro.input_ids[i, len(p):len(p) + n].tolist() == ro.completions[i]
        assert ro.completion_mask[i].sum() == n and ro.attention_mask[i].sum() == len(p) + n
        assert 2 not in ro.completions[i][:-1]
    logps, _ = forward_logps(model, ro.input_ids, ro.attention_mask)
    m = ro.completion_mask.bool()
    assert (logps[m] - ro.engine_logps[m]).abs().max() < 1e-4
    again = generate_rollouts(model, prompts, 3, 6, 2, 1.0, torch.Generator().manual_seed(0))
    assert again.completions == ro.completions  # seeded: the same samples
    assert len({tuple(c) for c in ro.completions[:3]}) > 1  # the samples of one prompt differ


# --- tasks and rewards ---------------------------------------------------------------------------------------------

def test_builtin_task_is_seeded_bilingual_and_checkable():
    a, b = arithmetic_problems(50, seed=3), arithmetic_problems(50, seed=3)
    assert a == b and {r["lang"] for r in a} == {"en", "zh"}
    numeric = load_reward("numeric")
    for r in a:
        assert int(r["answer"]) >= 0
        assert numeric(r["prompt"], f"The answer is {r['answer']}.", answer=r["answer"]) == 1.0
        assert numeric(r["prompt"], f"{int(r['answer']) + 1}", answer=r["answer"]) == 0.0
    assert any("加" in r["prompt"] or "有" in r["prompt"] for r in a if r["lang"] == "zh")
    assert builtin_tasks("train")[:5] != builtin_tasks("val")[:5]


def test_builtin_rewards():
    fmt, rep = load_reward("format"), load_reward("repetition")
    assert fmt("q", "<think>3 and 5</think> 8", answer="8") == 1.0
    assert fmt("q", "<think>3 and 5 8", answer="8") == 0.0  # thinking not closed
    assert fmt("q", "8 or 9", answer="8") == 0.0  # two answers
    assert load_reward("numeric")("q", "<think>maybe 9</think>it is 8", answer="8") == 1.0
    assert load_reward("exact")("q", " yes ", answer="yes") == 1.0
    assert load_reward("regex:^\\d+$")("q", "42") == 1.0
    assert load_reward("length:2-4")("q", "abc") == 1.0 and load_reward("length:2-4")("q", "a") == 0.5
    assert rep("q", "a b c d e") == 0.0 and rep("q", "a b c a b c a b c") < -0.5
    r = load_reward("format=0.2")
    assert r.weight == 0.2
    with pytest.raises(ValueError, match="not a built-in"):
        load_reward("nonsense")


def test_bad_reward_functions_are_named(tmp_path):
    f = tmp_path / "my_rewards.py"
    f.write_text("def boom(prompt, completion, **record):\n    raise RuntimeError('kaput')\n"
                 "def nan(prompt, completion, **record):\n    return float('nan')\n"
                 "def text(prompt, completion, **record):\n    return 'high'\n"
                 "def reward(prompt, completion, **record):\n    return len(completion) / 10\n")
    rec = [{"prompt": "What is 1 plus 1?", "messages": [], "answer": "2"}]
    for name, problem in (("boom", "raised RuntimeError: kaput"), ("nan", "returned nan"), ("text", "not a number")):
        with pytest.raises(RewardError, match=f"my_rewards.py:{name}.*{problem}"):
            Rewards([f"{f}:{name}"])(rec, ["2"])
    assert Rewards([str(f), "numeric=2"])(rec, ["2"]) == [pytest.approx(0.1 + 2.0)]
    with pytest.raises(ValueError, match="no function 'missing'"):
        load_reward(f"{f}:missing")


def test_reward_model_scores_in_batches(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from minimind.tokenizer import save_tokenizer

    torch.manual_seed(0)
    rm = LlamaForSequenceClassification(LlamaConfig(vocab_size=6400, hidden_size=32, intermediate_size=64,
                                                    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                                    num_labels=1, pad_token_id=0))
    rm.save_pretrained(tmp_path / "rm")
    save_tokenizer(load_tokenizer(), tmp_path / "rm")
    rewards = Rewards([], str(tmp_path / "rm"))
    rewards.model.batch_size = 2
    recs = [{"prompt": p, "messages": [{"role": "user", "content": p}]} for p in ("Hi", "What is 2 plus 2?", "Yo")]
    scores = rewards(recs, ["Hello!", "4", "Hey there, how are you?"])
    one = [rewards([r], [c])[0] for r, c in zip(recs, ["Hello!", "4", "Hey there, how are you?"])]
    assert scores == pytest.approx(one, abs=1e-4) and len(set(round(s, 4) for s in scores)) == 3
    two = LlamaForSequenceClassification(LlamaConfig(vocab_size=6400, hidden_size=32, intermediate_size=64,
                                                     num_hidden_layers=1, num_attention_heads=2,
                                                     num_key_value_heads=1, num_labels=2))
    two.save_pretrained(tmp_path / "rm2")
    save_tokenizer(load_tokenizer(), tmp_path / "rm2")
    with pytest.raises(ValueError, match="2 outputs"):
        Rewards([], str(tmp_path / "rm2"))


def test_prompt_files_are_checked(tmp_path):
    tok = load_tokenizer()
    good = tmp_path / "p.jsonl"
    good.write_text(json.dumps({"prompt": "What is 2 plus 2?", "answer": "4"}) + "\n" +
                    json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    ds = PromptDataset(str(good), tok, 64, split="train")
    assert ds[0]["answer"] == "4" and ds[0]["prompt_ids"][-1] != tok.eos_token_id
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "system", "content": "Be brief."},  # (a final assistant
                                            {"role": "assistant", "content": "Hello"}]}) + "\n")  # turn is dropped)
    with pytest.raises(ValueError, match="bad.jsonl:1: the conversation must end with a user message"):
        PromptDataset(str(bad), tok, 64)


# --- short runs ----------------------------------------------------------------------------------------------------

RUN = ["--batch_size", "4", "--num_generations", "8", "--max_new_tokens", "3", "--log_interval", "1",
       "--dtype", "fp32", "--eval_interval", "0", "--eval_batches", "1", "--warmup_steps", "0", "--max_seq_len", "96"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_model_dir(tiny_model(hidden=64), tmp_path_factory.mktemp("rl") / "base")


def rewards_of(out):
    return [r["reward"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "reward" in r]


def test_reward_rises_on_the_builtin_task(base, tmp_path):
    """A random tiny model learns the format of the built-in task (exactly one number) with GRPO in 40 CPU steps:
    mean reward over the first 10 steps ~0.04, over the last 10 ~0.3 (seed 42)."""
    out = tmp_path / "grpo"
    run_grpo(parse_args([*RUN, "--pretrained_path", str(base), "--output_dir", str(out), "--max_steps", "40",
                         "--learning_rate", "1e-2", "--beta", "0", "--reward", "format"], command="grpo"))
    r = rewards_of(out)
    first, last = sum(r[:10]) / 10, sum(r[-10:]) / 10
    assert len(r) == 40 and last > first + 0.1 and last > 0.15, (first, last)
    from minimind import MiniMindForCausalLM

    trained, start = MiniMindForCausalLM.from_pretrained(out), MiniMindForCausalLM.from_pretrained(base)
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values()))
    settings = json.loads((out / "args.json").read_text())  # what `--config` reads back
    assert (settings["max_steps"], settings["reward"], settings["pretrained_path"]) == (40, ["format"], str(base))


def kls_of(out):
    return [r["kl"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "kl" in r]


def test_kl_stays_bounded_with_beta(base, tmp_path):
    """The same run with a negligible beta (the KL is measured, not paid) and with beta = 2: the KL to the reference
    over the last steps is smaller with the pull, and stays below a bound throughout. The reward (an "e" in the
    answer) is dense, so the policy drifts; at lr 1e-2 Adam's own step size held the KL near 0.03 with or without the
    pull, so the rate is 2e-3. Measured with seeds 42, 1 and 2: late KL 0.009-0.010 held against 0.018-0.021 free."""
    flags = [*RUN, "--pretrained_path", str(base), "--max_steps", "12", "--learning_rate", "2e-3",
             "--reward", "regex:e"]
    free, held = tmp_path / "free", tmp_path / "held"
    run_grpo(parse_args([*flags, "--beta", "1e-9", "--output_dir", str(free)], command="grpo"))
    run_grpo(parse_args([*flags, "--beta", "2.0", "--output_dir", str(held)], command="grpo"))
    k_free, k_held = kls_of(free), kls_of(held)
    late_free, late_held = sum(k_free[-4:]) / 4, sum(k_held[-4:]) / 4
    assert max(k_held) < 0.045 and late_held < 0.75 * late_free, (k_free, k_held)


def test_lora_only_rl_trains_the_adapters_alone(base, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "lora"
    run_grpo(parse_args([*RUN, "--pretrained_path", str(base), "--output_dir", str(out), "--max_steps", "3",
                         "--learning_rate", "1e-2", "--lora_rank", "4", "--reward", "format"], command="grpo"))
    state = torch.load(out / STATE_FILE, weights_only=True)["model"]
    start = load_file(base / "model.safetensors")
    lora = [k for k in state if "lora_" in k]
    adapter = load_file(out / "adapter_model.safetensors")  # PEFT's names, the run's last adapters
    assert lora and adapter.keys() == {f"base_model.model.{k}.weight" for k in lora}
    assert all(torch.equal(adapter[f"base_model.model.{k}.weight"], state[k]) for k in lora)
    for k, v in start.items():  # the base weights did not move
        assert torch.equal(state[k.replace(".weight", ".base.weight") if k.replace(".weight", ".base.weight")
                                 in state else k], v), k
    assert any(state[k].abs().sum() > 0 for k in lora if "lora_B" in k)  # B starts at zero: it trained


@pytest.mark.parametrize("command,extra", [("grpo", ["--updates_per_batch", "2", "--beta", "0.1"]),
                                           ("ppo", ["--lora_rank", "4", "--beta", "0.1"])])
def test_rl_resumes_exactly_after_sigkill(command, extra, base, tmp_path):
    from minimind.train.ppo import run_ppo

    flags = [*RUN, "--pretrained_path", str(base), "--max_steps", "10", "--save_steps", "2", "--learning_rate",
             "3e-3", "--batch_size", "2", "--num_generations", "4", *extra]
    straight = tmp_path / "straight"
    runner = {"grpo": run_grpo, "ppo": run_ppo}[command]
    runner(parse_args([*flags, "--output_dir", str(straight)], command=command))
    killed = tmp_path / "killed"
    kill_once_saved([command, *flags], killed)
    assert not (killed / "model_final.pth").exists(), "the run finished before it could be killed"
    steps = torch.load(killed / STATE_FILE, weights_only=True)["train"]["step"]
    assert 2 <= steps < 10 and steps % 2 == 0
    runner(parse_args([*flags, "--output_dir", str(killed), "--resume"], command=command))
    a = torch.load(straight / STATE_FILE, weights_only=True)["model"]
    b = torch.load(killed / STATE_FILE, weights_only=True)["model"]
    assert set(a) == set(b)
    for name in a:
        assert (a[name] - b[name]).abs().max() <= 1e-6, name


# --- agent RL ------------------------------------------------------------------------------------------------------

def test_agent_rollouts_run_tools_and_train_only_the_model_turns():
    """Scripted model turns (the engine replaced by a script), a stub tool: the call is run, its result follows as a
    tool turn that is context (mask 0), the answer turn ends the row, rewards see the calls; a malformed call and
    an unknown tool count against tool_call; the turn limit stops a row that keeps calling."""
    from types import SimpleNamespace

    from minimind.train.agent import AgentSteps, tool_turn_ids
    from minimind.train.config import build_config

    tok = load_tokenizer()
    eos = tok.eos_token_id
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "3+5"}}\n</tool_call>'
    script = {  # row -> its turns
        0: [call, "It is 8."],
        1: ["<tool_call>\nnot json\n</tool_call>", "no idea"],  # malformed: stays text, the row ends
        2: ['<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>', "It is 8."],
        3: [call, call, call],  # keeps calling: stopped by --max_turns 2
    }
    seen = []

    def stub(name, arguments):
        seen.append((name, arguments))
        return "8"

    def fake_generate(policy, prompts, G, n, eos_id, temperature, generator, full_length):
        comps = []
        for ids in prompts:  # the row from its prompt, the turn from the tool results so far
            text = tok.decode(ids)
            row = int(text.split("Row ")[1][0])
            comps.append(tok.encode(script[row][text.count("<tool_response>")], add_special_tokens=False) + [eos])
        width = max(len(c) for c in comps)
        mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in comps])
        return SimpleNamespace(completions=comps, engine_logps=torch.full(mask.shape, -0.5) * mask,
                               completion_mask=mask)

    config = build_config("agent", {"max_turns": 2, "max_seq_len": 512, "max_new_tokens": 40, "tools": ["calculator"]})
    steps = AgentSteps(config, tok, Rewards(["numeric", "tool_call", "tool_result"]), tool_runner=stub)
    steps.generate = fake_generate
    records = [{"prompt": "What is 3 plus 5?", "answer": "8", "messages": [],
                "prompt_ids": tok.encode(f"<|im_start|>user\nRow {i}: What is 3 plus 5?<|im_end|>\n"
                                         "<|im_start|>assistant\n", add_special_tokens=False)} for i in range(4)]
    ro, texts, rows = steps.rollout(tiny_model(), records, 1, 1.0, [0, 1, 2, 3])
    assert seen == [("calculator", {"expression": "3+5"}), ("calculator", {"expression": "3+5"})]
    assert texts[0] == "It is 8." and rows[0]["tool_calls"][0]["result"] == "8"
    assert rows[1]["malformed_calls"] == 1 and not rows[1]["tool_calls"]
    assert rows[2]["tool_calls"][0]["result"].startswith("error: unknown tool 'rm_rf'")
    assert len(rows[3]["tool_calls"]) == 1  # turn 2 (the last) calls again: not run
    # row 0: prompt, turn 1 (trained), the tool turn (context), turn 2 (trained)
    p = len(records[0]["prompt_ids"])
    t1 = tok.encode(call, add_special_tokens=False) + [eos]
    tool = tool_turn_ids(tok, ["8"])
    t2 = tok.encode("It is 8.", add_special_tokens=False) + [eos]
    n = p + len(t1) + len(tool) + len(t2)
    assert ro.input_ids[0, :n].tolist() == records[0]["prompt_ids"] + t1 + tool + t2
    assert ro.completion_mask[0, :n].tolist() == [0] * p + [1] * len(t1) + [0] * len(tool) + [1] * len(t2)
    assert "<tool_response>\n8\n</tool_response>" in tok.decode(tool)
    assert ro.engine_logps[0][ro.completion_mask[0].bool()].tolist() == [-0.5] * (len(t1) + len(t2))
    r = steps.rewards(rows, texts)
    assert r[0] == 3.0 and r[1] == 0.0 and r[2] == 1.0  # row 2: right answer, its one call failed


def test_agent_command_runs(tmp_path):
    from minimind.train.agent import run_agent

    base = save_model_dir(tiny_model(hidden=64, max_position_embeddings=512), tmp_path / "base")
    with pytest.raises(ValueError, match="longer than the model's context"):
        run_agent(parse_args(["--pretrained_path", str(base), "--max_seq_len", "1024"], command="agent"))
    out = tmp_path / "agent"
    run_agent(parse_args([*RUN, "--pretrained_path", str(base), "--output_dir", str(out), "--max_steps", "2",
                          "--max_seq_len", "256", "--batch_size", "2", "--num_generations", "2",
                          "--max_turns", "2"], command="agent"))
    assert len(rewards_of(out)) == 2 and (out / "model.safetensors").exists()
