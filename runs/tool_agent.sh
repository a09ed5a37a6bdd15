#!/usr/bin/env bash
# A calculator agent trained from scratch on a laptop CPU (2 cores, under an hour), no download:
#   data -> tokenizer -> pretrain (built-in corpus) -> SFT (tool-use conversations) -> agent RL (GRPO on rollouts
#   that call the real calculator, rewarded for the exact final answer) -> evaluation after each stage, in-process
#   and through `minimind serve` with the openai client -> OUT/report.md
#
#   bash runs/tool_agent.sh out/agent            # the full run (runs/README.md: what it gives, and why these sizes)
#   QUICK=1 bash runs/tool_agent.sh /tmp/agent   # tiny settings, a couple of minutes: the pipeline end to end
#
# The model it leaves is OUT/final (a model directory: minimind chat / serve / eval take it). Each stage's full
# output is OUT/<stage>.log; the evaluations are OUT/eval_<stage>.json; the times OUT/times.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash runs/tool_agent.sh OUT}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/data"
: > "$OUT/times.txt"

if [ "${QUICK:-0}" = 1 ]; then  # the same commands at toy sizes
    SFT_N=400; PROMPTS_N=64; VOCAB=2048; MODEL=(--hidden_size 64 --num_layers 2 --num_heads 2 --num_kv_heads 1)
    PRETRAIN_STEPS=10; SFT_STEPS=10; SFT_BATCH=8; AGENT_STEPS=2; EVAL_N=8; SERVED_N=4
else
    # Hidden 128, 4 layers, batch 32: the smallest batch and widest model that learnt the copy drill in a few
    # hundred steps (runs/README.md); hidden 256 with batch 16 never did.
    SFT_N=${SFT_N:-30000}; PROMPTS_N=${PROMPTS_N:-2000}; VOCAB=${VOCAB:-4096}
    MODEL=(--hidden_size "${HIDDEN:-128}" --num_layers "${LAYERS:-4}" --num_heads 4 --num_kv_heads 2 --dropout 0)
    PRETRAIN_STEPS=${PRETRAIN_STEPS:-300}; SFT_STEPS=${SFT_STEPS:-1000}; SFT_BATCH=${SFT_BATCH:-32}
    AGENT_STEPS=${AGENT_STEPS:-30}; EVAL_N=${EVAL_N:-200}; SERVED_N=${SERVED_N:-200}
fi
SFT_LR=${SFT_LR:-1e-3}; DIGITS=${DIGITS:-3}

run() {  # run NAME COMMAND...: progress lines on the screen, the whole log in OUT/NAME.log, the time in times.txt
    local name=$1 start=$SECONDS
    shift
    echo "=== $name: $*"
    "$@" 2>&1 | tee "$OUT/$name.log" | sed -u -n -E 's/.*\r//; /^(page:|Epoch \[|Eval @|Held-out|Rollout @|trained|wrote|questions|all |seen |unseen |en |zh |[^ ]+: [0-9]+ held-out)/p'
    echo "$name $((SECONDS - start))" >> "$OUT/times.txt"
}

evaluate() {  # evaluate STAGE: the stage's model on the held-out questions, in-process -> OUT/eval_STAGE.json
    run "eval_$1" minimind eval "$OUT/$1" --tasks tooluse --limit "$EVAL_N" --output_path "$OUT/eval_$1.json"
}

run data minimind data tooluse --out "$OUT/data/sft.jsonl" --n "$SFT_N"
minimind data tooluse --out "$OUT/data/prompts.jsonl" --n "$PROMPTS_N" --prompts
# Digits in groups of 3, left to right: a number is the same few tokens in the question, the call's JSON, the tool's
# result and the answer, so the model copies whole groups.
run tokenizer minimind tokenizer train --data "$OUT/data/sft.jsonl" --builtin --split_digits "$DIGITS" \
    --vocab_size "$VOCAB" \
    --out "$OUT/tokenizer"
run pretrain python train.py --tokenizer "$OUT/tokenizer" --vocab_size "$VOCAB" "${MODEL[@]}" --max_seq_len 256 \
    --batch_size 16 --max_steps "$PRETRAIN_STEPS" --learning_rate 2e-3 --warmup_steps 20 --eval_interval 0 \
    --eval_batches 10 --log_interval 50 --save_steps 500 --output_dir "$OUT/pretrain"
run sft python train.py --stage sft --pretrained_path "$OUT/pretrain" --data "$OUT/data/sft.jsonl" \
    --max_seq_len 512 --batch_size "$SFT_BATCH" --max_steps "$SFT_STEPS" --learning_rate "$SFT_LR" --warmup_steps 20 \
    --group_by_length --eval_interval 0 --eval_batches 10 --log_interval 50 --save_steps 500 --output_dir "$OUT/sft"
evaluate sft
# Agent RL: 8 prompts x 4 rollouts a step, each up to 3 model turns of 64 tokens with the calculator's results
# between them; reward 1 for the exact final answer, 0.2 for calls that ran.
run agent minimind agent --pretrained_path "$OUT/sft" --data "$OUT/data/prompts.jsonl" --max_seq_len 512 \
    --batch_size 8 --num_generations 4 --max_new_tokens 64 --max_turns 3 --max_steps "$AGENT_STEPS" \
    --learning_rate 1e-4 --beta 0.02 --reward numeric --reward tool_call=0.2 --eval_interval 0 --eval_batches 2 \
    --log_interval 10 --save_steps 500 --output_dir "$OUT/agent"
evaluate agent
rm -rf "$OUT/final"
cp -r "$OUT/agent" "$OUT/final"

# The final model as a user meets it: minimind serve, driven by the openai client with the calculator in tools.
port=$(python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
minimind serve "$OUT/final" --port "$port" --model_name minimind --tools calculator > "$OUT/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
python -c "
import sys, time, urllib.request
for _ in range(240):
    try:
        urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=1)
        break
    except OSError:
        time.sleep(0.5)
"
run eval_served minimind eval minimind --tasks tooluse --limit "$SERVED_N" --base_url "http://127.0.0.1:$port/v1" \
    --output_path "$OUT/eval_served.json"
# The chat page in a real browser (where chromium is installed): two held-out questions, OUT/chat.png.
run page python runs/tool_agent_page.py "$OUT" "http://127.0.0.1:$port" || echo "=== page: a wrong answer (above)"
kill $server 2>/dev/null || true

python runs/tool_agent_report.py "$OUT"
echo "=== report: $OUT/report.md"
