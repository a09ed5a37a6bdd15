#!/usr/bin/env bash
# The whole pipeline on the built-in data, on a 2-core CPU in a few minutes:
#   pretrain -> SFT -> LoRA (merged) -> DPO -> distillation into a smaller student -> GRPO on the built-in
#   arithmetic task -> one chat answer
#   -> tool use: SFT on the built-in tool-use set, its answers on held-out questions with the calculator, a chat
#      that runs the calculator.
# Every line is the command a user would type; nothing is downloaded.
#
#   bash runs/cpu_demo.sh                  # outputs in runs/cpu_demo/ (ignored by git)
#   OUT=/tmp/demo bash runs/cpu_demo.sh
#
# The model is the `tiny` preset (1.6M parameters) and every run is capped at a few dozen to a few hundred steps,
# so the chat answer at the end is barely language: the point is that each stage runs, end to end, on the shared
# trainer. Measured time and each stage's final metrics: runs/README.md. Each stage's full output is in
# $OUT/<stage>.log; its metrics in $OUT/<stage>/metrics.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/cpu_demo}
export PYTHONUNBUFFERED=1  # progress lines as they happen, through the pipe below
mkdir -p "$OUT"
: > "$OUT/times.txt"
# Shared by every stage: short sequences, evaluation only at the end (10 held-out batches).
COMMON=(--max_seq_len 128 --batch_size 16 --eval_interval 0 --eval_batches 10 --log_interval 25 --save_steps 100)

run() {  # run NAME COMMAND...: show the progress lines, keep the whole log, record the time
    local name=$1 start=$SECONDS
    shift
    echo "=== $name: $*"
    "$@" 2>&1 | tee "$OUT/$name.log" | sed -u -n -E 's/.*\r//; /^(Epoch \[|Eval @|Held-out|Sample:|LoRA adapter|Rollout @|训练完成)/p'
    echo "$name $((SECONDS - start))" >> "$OUT/times.txt"
}

total_start=$SECONDS
run pretrain python train.py --preset tiny "${COMMON[@]}" --max_steps 300 --learning_rate 3e-3 \
    --output_dir "$OUT/pretrain"
run sft python train.py --stage sft --pretrained_path "$OUT/pretrain" "${COMMON[@]}" --max_steps 200 \
    --learning_rate 1e-3 --output_dir "$OUT/sft"
run lora minimind lora --pretrained_path "$OUT/sft" "${COMMON[@]}" --max_steps 100 --learning_rate 3e-3 \
    --lora_rank 8 --lora_alpha 16 --merge --output_dir "$OUT/lora"
run dpo minimind dpo --pretrained_path "$OUT/lora" "${COMMON[@]}" --max_steps 60 --learning_rate 3e-4 --beta 0.1 \
    --output_dir "$OUT/dpo"
run distill minimind distill --teacher "$OUT/dpo" --hidden_size 64 --num_layers 2 --num_heads 2 --num_kv_heads 1 \
    "${COMMON[@]}" --max_steps 100 --learning_rate 3e-3 --temperature 2.0 --alpha 0.5 --output_dir "$OUT/distill"
# RL: 4 prompts x 4 samples a step, answers of up to 16 tokens, rewards numeric + format (the defaults)
run grpo minimind grpo --pretrained_path "$OUT/sft" --max_seq_len 128 --batch_size 4 --num_generations 4 \
    --max_new_tokens 16 --max_steps 30 --learning_rate 3e-4 --beta 0.02 --eval_interval 0 --eval_batches 4 \
    --log_interval 10 --output_dir "$OUT/grpo"

echo "=== chat with the DPO model"
chat_start=$SECONDS
printf 'Hello, how are you?\n' | minimind chat "$OUT/dpo" --temperature 0 --max_new_tokens 40 --repetition_penalty 1.2 \
    | tee "$OUT/chat.log"
echo "chat $((SECONDS - chat_start))" >> "$OUT/times.txt"

# Tool use: the SFT model learns the built-in tool-use set (questions, calls with exact arguments, real results,
# answers; sequences up to 512 tokens, since the tools' schemas are in every prompt).
minimind data tooluse --out "$OUT/tooluse.jsonl" --n 3000
run tool python train.py --stage sft --pretrained_path "$OUT/sft" --data "$OUT/tooluse.jsonl" --max_seq_len 512 \
    --batch_size 8 --eval_interval 0 --eval_batches 10 --log_interval 25 --save_steps 100 --max_steps 240 \
    --learning_rate 3e-3 --output_dir "$OUT/tool"
echo "=== the tool model on 100 held-out arithmetic questions, with the calculator"
minimind eval "$OUT/tool" --tasks tooluse --limit 100 | tee "$OUT/tool_rate.log"
printf 'What is 37 * 12?\n' | minimind chat "$OUT/tool" --tools calculator,weekday --temperature 0 \
    --max_new_tokens 60 | tee -a "$OUT/chat.log"

echo "=== summary (total $((SECONDS - total_start)) s)"
python - "$OUT" <<'EOF'
import json, os, sys

out = sys.argv[1]
times = dict(line.split() for line in open(os.path.join(out, "times.txt")))
for stage in ("pretrain", "sft", "lora", "dpo", "distill", "grpo", "tool"):
    records = [json.loads(line) for line in open(os.path.join(out, stage, "metrics.jsonl"))]
    last_train = [r for r in records if "loss" in r][-1]
    final_eval = [r for r in records if "eval_loss" in r][-1]
    keys = {"dpo": ("eval_loss", "eval_margin", "eval_accuracy", "eval_rewards/chosen", "eval_rewards/rejected"),
            "distill": ("eval_loss", "eval_ce", "eval_kl"),
            "grpo": ("eval_reward", "eval_kl", "eval_response_len")}.get(stage, ("eval_loss", "eval_ppl"))
    shown = ", ".join(f"{k.removeprefix('eval_')} {final_eval[k]:.4f}" for k in keys)
    extra = ""
    if stage == "lora":
        extra = f", adapter {os.path.getsize(os.path.join(out, 'lora', 'adapter', 'adapter_model.safetensors')) / 1e3:.0f} kB"
    print(f"{stage:<9} {times.get(stage, '?'):>4} s  steps {last_train['step']:<4} train loss {last_train['loss']:.4f}; "
          f"held-out {shown}{extra}")
EOF
