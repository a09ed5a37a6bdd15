"""Training: one loop, shared by every stage.

- `config.py`: `TrainConfig`, every setting of a run, typed, with its default (no torch: the CLI builds its flags
  from it), and reading settings from a YAML / JSON file (`--config`).
- `trainer.py`: the `Trainer`, the loop (AMP, accumulation, clipping, the NaN guard, evaluation), which knows
  nothing of a stage but its data and its loss. Beside it, its components: `parallel.py` (DDP / FSDP2 under
  torchrun), `resume.py` (the training state that resumes exactly), `metrics.py` (logging, the seed's
  status lines, metrics.jsonl, TensorBoard / W&B, the loss curve).
- `setup.py`: what every stage shares around it: the settings resolved, the run's start (logging, device,
  distributed, seed, tokenizer), the model, the data, the saved model directories.
- One module per stage, each a short recipe of data + loss: `pretrain.py` (pretraining and SFT), `lora.py`,
  `dpo.py`, `distill.py`; reinforcement learning: `rl.py` (GRPO / CISPO, and the rollout step the RL stages share
  through the trainer's `prepare` hook), `ppo.py`, `agent.py` (tool-calling rollouts), with `rollout.py` (sampling
  through the decode engine) and `rewards.py`.
"""
