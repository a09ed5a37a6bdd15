"""Evaluation of a trained model: `minimind eval`.

- `perplexity.py`: loss, per-document perplexity and bits per byte over held-out texts.
- `harness.py`: lm-evaluation-harness tasks, in-process (an optional extra).
- `tooluse.py`: the held-out calculator-call rate of a tool-use model.
"""
