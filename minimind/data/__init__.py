"""Data: text in, batches out, for pretraining, SFT and DPO.

- `files.py`: read every supported format (`.jsonl`/`.json`, `.txt`, `.parquet`, folders, globs); bad records
  stop with `path:line: what is wrong; what was expected` (a `DataError`), or are skipped and counted.
- `messages.py`: the chat format: conversations and preference pairs as records, and their rendering through the
  tokenizer's chat template with the labels of what the assistant writes.
- `tokens.py`: tokenizing, the token cache, packing into sequences, and prepared shards (`minimind data prepare`).
- `datasets.py`: the datasets the trainer reads (`PretrainDataset`, `StreamingPretrainDataset`, `SFTDataset`,
  `DPODataset`) and `collate`.
- `corpus.py`: the built-in offline corpus and its fixed train / val split.

With `data=None` each dataset uses the built-in corpus.
"""
