"""Agent RL (`minimind agent`): GRPO on multi-turn rollouts in which the model may call tools.

The prompts offer tools (`--tools`, default: the built-in calculator; schemas from `minimind.tools`) in the chat
template's system block; a prompt whose system message offers its own (MiniMind-3's agent_rl.jsonl) offers those,
and only those may be called. A rollout turn samples every still-running row at once through the decode engine
(each row's whole context re-prefilled: prompt, its earlier turns and tool results); the text is read with
`minimind.data.parse.parse_output`; a turn that ends with `<|im_end|>` and holds tool calls has them run
(`run_offline`, or the `tool_runner` given), and the results are appended as the chat template renders them (a
`<tool_response>` user turn, then the assistant's turn opened again); a turn with no call, or the `--max_turns`-th,
ends the row. The row's tokens are then: prompt, turn 1, tool results, turn 2, ...; only the model's own turns are
trained on (the completion mask), the tool results are context. The tools run offline: minimind's built-ins, and
MiniMind-3's `calculate_math` as the built-in calculator; its other tools (weather, time, exchange rates,
translation, units) have no offline implementation and answer with an error, unless `run_agent` is given a
`tool_runner` that runs them.

Rewards see `completion` = the last turn's text, plus `tool_calls` ([{"name", "arguments", "result"}]) and
`malformed_calls` (tool-call blocks that did not parse) in the record: the built-ins `tool_call` (well-formed calls
that ran) and `tool_result` (the answer uses a tool's result) read them; `numeric` checks the answer as in GRPO, and
`gt` the values of a MiniMind-3 prompt's "gt" list (the default reward for such prompts: `rl.fit_rewards`).
The loss, advantages, logging and resume are GRPO's (`rl.py`).
"""

import json

import torch

from ..data.messages import render
from ..data.parse import parse_output
from ..infer.sampling import make_generator
from .config import TrainConfig
from .rl import RolloutSteps, grpo_loss_fn, rl_parts, rollout_seed
from .rollout import Rollout, generate_rollouts


def tool_turn_ids(tokenizer, results: list[str]) -> list[int]:
    """The tokens that follow a model turn ending in eos when its tool calls returned `results`: the tool messages as
    the chat template renders them, and the assistant's next turn opened."""
    marker = "\x00TURN\x00"
    before = [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}]
    text = render(tokenizer, [*before, *({"role": "tool", "content": r} for r in results)], add_generation_prompt=True)
    end = text.index(marker) + len(marker) + len(tokenizer.eos_token)  # the model's turn ends with eos
    return tokenizer.encode(text[end:], add_special_tokens=False)


MINIMIND_MATH = str.maketrans({"^": "**", "×": "*", "÷": "/", "−": "-", "（": "(", "）": ")"})


def run_offline(name: str, arguments) -> str:
    """A tool call's result as text: a built-in tool (`minimind.tools.run_tool`), or MiniMind-3's `calculate_math`
    (its agent data's calculator) as the built-in calculator, with the operators MiniMind reads (^ for **, × ÷ −, full
    width parentheses) and its result shape, `{"result": "..."}`."""
    from ..tools import run_tool

    if name != "calculate_math":
        return run_tool(name, arguments)
    if isinstance(arguments, dict) and isinstance(arguments.get("expression"), str):
        arguments = {**arguments, "expression": arguments["expression"].translate(MINIMIND_MATH)}
    result = run_tool("calculator", arguments)
    return result if result.startswith("error:") else json.dumps({"result": result})


def offered(record: dict, default: list[str]) -> list[str]:
    """The names of the tools a prompt offers: its own (MiniMind-3's, on its system message), else the run's."""
    tools = getattr(record.get("messages"), "tools", None)
    return [t["function"]["name"] for t in tools] if tools else list(default)


class AgentSteps(RolloutSteps):
    """GRPO's rollout step with multi-turn, tool-calling rollouts (see the module docstring)."""

    def __init__(self, *args, tool_runner=None, **kw):
        super().__init__(*args, **kw)
        self.tool_runner = tool_runner or run_offline
        self.generate = generate_rollouts

    def rollout(self, policy, records: list[dict], G: int, temperature: float, seeds: list[int]):
        c, tok = self.config, self.tokenizer
        eos = tok.eos_token_id
        rows = [{**r, "tool_calls": [], "malformed_calls": 0} for r in records for _ in range(G)]
        device = next(policy.parameters()).device  # one generator per row, kept over its turns
        generators = [make_generator(rollout_seed(s, 0, g), device) for s in seeds for g in range(G)]
        ids = [list(r["prompt_ids"]) for r in rows]
        trained = [[0] * len(x) for x in ids]  # 1 on the model's own tokens
        logps = [[0.0] * len(x) for x in ids]
        last_text = [""] * len(rows)
        active = list(range(len(rows)))
        for turn in range(c.max_turns):
            room = c.max_seq_len - max(len(ids[i]) for i in active)
            if room <= 0:
                break
            ro = self.generate(policy, [ids[i] for i in active], 1, min(c.max_new_tokens, room), eos, temperature,
                               [generators[i] for i in active], self.full_length)
            still = []
            for j, i in enumerate(active):
                new = ro.completions[j]
                ids[i] += new
                trained[i] += [1] * len(new)
                lp = ro.engine_logps[j][ro.completion_mask[j].bool()].tolist()
                logps[i] += lp
                text = tok.decode(new, skip_special_tokens=True)
                last_text[i] = text
                parsed = parse_output(text)
                rows[i]["malformed_calls"] += text.count("<tool_call>") - len(parsed.tool_calls)
                if not parsed.tool_calls or not new or new[-1] != eos or turn == c.max_turns - 1:
                    continue
                results, names = [], offered(rows[i], c.tools)
                for call in parsed.tool_calls:
                    allowed = call["name"] in names
                    result = str(self.tool_runner(call["name"], call["arguments"])) if allowed else \
                        f"error: unknown tool {call['name']!r}; the tools are {', '.join(names)}"
                    rows[i]["tool_calls"].append({**call, "result": result})
                    results.append(result)
                extra = tool_turn_ids(tok, results)
                if len(ids[i]) + len(extra) >= c.max_seq_len:  # no room left to answer: the row ends here
                    continue
                ids[i] += extra
                trained[i] += [0] * len(extra)
                logps[i] += [0.0] * len(extra)
                still.append(i)
            active = still
            if not active:
                break
        return self._pack(ids, trained, logps, policy), last_text, rows

    @staticmethod
    def _pack(ids, trained, logps, policy) -> Rollout:
        device = next(policy.parameters()).device
        N, L = len(ids), max(len(x) for x in ids)
        out = torch.zeros(N, L, dtype=torch.long, device=device)
        mask, comp = torch.zeros_like(out), torch.zeros_like(out)
        lp = torch.zeros(N, L, dtype=torch.float32, device=device)
        for i in range(N):
            n = len(ids[i])
            out[i, :n] = torch.tensor(ids[i], device=device)
            mask[i, :n] = 1
            comp[i, :n] = torch.tensor(trained[i], device=device)
            lp[i, :n] = torch.tensor(logps[i], device=device)
        completions = [[t for t, m in zip(x, tr) if m] for x, tr in zip(ids, trained)]
        finished = torch.ones(N, dtype=torch.bool, device=device)
        return Rollout(out, mask, comp, lp, completions, finished)


def run_agent(config: TrainConfig, tool_runner=None) -> dict | None:
    """GRPO with multi-turn tool-calling rollouts of config.pretrained_path; see the module docstring."""
    from ..data.tasks import collate_prompts
    from ..tools import tool_schemas
    from .setup import fit, sampler_for

    if config.max_turns < 1:
        raise ValueError(f"--max_turns must be >= 1, got {config.max_turns}")
    try:
        schemas = tool_schemas(config.tools)
    except KeyError as e:
        raise ValueError(f"--tools: {e.args[0]}") from None
    config, dist_info, tokenizer, model, reference, rewards, train_set, val_set, save_model = \
        rl_parts(config, "agent", schemas)
    steps = AgentSteps(config, tokenizer, rewards, reference, dist_info.rank, dist_info.main,
                       full_length=config.fsdp and dist_info.world > 1, tool_runner=tool_runner)
    return fit(config, "agent", model, train_set, val_set, dist_info, loss_fn=grpo_loss_fn(config),
               collate_fn=collate_prompts, save_model=save_model, sample_fn=sampler_for(tokenizer, "sft"),
               prepare=steps, updates_per_batch=config.updates_per_batch)
