"""Training: one loop, shared by every stage.

- `trainer.py`: the `Trainer` (AMP, accumulation, clipping, the NaN guard, evaluation, logging, exact resume,
  DDP / FSDP2 under torchrun), which knows nothing of a stage but its data and its loss.
- `setup.py`: what every stage shares around it: the flags resolved, the run's start (device, distributed, seed,
  tokenizer), the model, the data, and the saved model directories.
- One module per stage, each a short recipe of data + loss: `pretrain.py` (pretraining and SFT), `lora.py`,
  `dpo.py`, `distill.py`.
"""
