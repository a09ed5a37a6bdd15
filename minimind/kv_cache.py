"""The KV cache: per-layer key/value buffers, preallocated and written in place, growing by doubling.
"""

import torch
import torch.nn.functional as F


class KVCache:
    """Per-layer key/value buffers (B, Hkv, capacity, D), written in place.

    `update` appends this step's keys/values and returns views of everything cached so far. The
    buffers grow by doubling, so a generation of n tokens costs O(log n) reallocations, not n.
    Also accepts MiniMind-style lists of (k, v) tuples via `from_legacy`.
    """

    def __init__(self, num_layers: int, capacity: int = 0):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.lengths = [0] * num_layers
        self.capacity = capacity

    @classmethod
    def from_legacy(cls, past) -> "KVCache":
        cache = cls(len(past))
        for i, (k, v) in enumerate(past):
            cache.update(k, v, i)
        return cache

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]

    def _reserve(self, layer_idx: int, like: torch.Tensor, needed: int):
        buf_k, buf_v = self.keys[layer_idx], self.values[layer_idx]
        if buf_k is not None and buf_k.shape[2] >= needed:
            return
        capacity = max(needed, self.capacity, 2 * (buf_k.shape[2] if buf_k is not None else 0), 16)
        B, H, _, D = like.shape
        # zeros, not garbage: the compiled decode step attends over unwritten columns too (masked, weight 0, and
        # 0 * a NaN left in memory would still be NaN)
        new_k = like.new_zeros(B, H, capacity, D)
        new_v = like.new_zeros(B, H, capacity, D)
        n = self.lengths[layer_idx]
        if n:
            new_k[:, :, :n] = buf_k[:, :, :n]
            new_v[:, :, :n] = buf_v[:, :, :n]
        self.keys[layer_idx], self.values[layer_idx] = new_k, new_v

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, cache_kwargs=None):
        """key/value (B, Hkv, T, D) -> all cached keys/values (B, Hkv, past + T, D)."""
        start = self.lengths[layer_idx]
        end = start + key.shape[2]
        self._reserve(layer_idx, key, end)
        self.keys[layer_idx][:, :, start:end] = key
        self.values[layer_idx][:, :, start:end] = value
        self.lengths[layer_idx] = end
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def to_legacy(self):
        return [(k[:, :, :n], v[:, :, :n]) for k, v, n in zip(self.keys, self.values, self.lengths)]

    @classmethod
    def cat(cls, caches: list["KVCache"]) -> "KVCache":
        """Several batches' caches as one, along the batch dimension. A shorter cache is left-padded with zeros to
        the longest (give those columns a 0 in the attention mask), so every row's last token stays in the last
        column. Used by the server to let new requests join a batch that is decoding."""
        out = cls(len(caches[0]))
        for i in range(len(out)):
            n = max(c.lengths[i] for c in caches)
            for buffers, part in ((out.keys, 0), (out.values, 1)):
                # (B_c, Hkv, n_c, D) each, padded on the left of the length dimension to n
                tensors = [c[i][part] for c in caches]
                buffers[i] = torch.cat([F.pad(t, (0, 0, n - t.shape[2], 0)) for t in tensors], dim=0)
            out.lengths[i] = n
        return out

    def select(self, rows: torch.Tensor, start: int = 0) -> "KVCache":
        """Keep only the batch rows `rows` (LongTensor of indices) and the columns from `start` on, in place; the
        buffers are copied to exactly that size, so dropped rows and columns free their memory."""
        for i, n in enumerate(self.lengths):
            if self.keys[i] is not None:
                self.keys[i] = self.keys[i][:, :, start:n].index_select(0, rows)  # (len(rows), Hkv, n - start, D)
                self.values[i] = self.values[i][:, :, start:n].index_select(0, rows)
                self.lengths[i] = n - start
        return self

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, layer_idx):
        n = self.lengths[layer_idx]
        return self.keys[layer_idx][:, :, :n], self.values[layer_idx][:, :, :n]

    def __iter__(self):
        return iter(self.to_legacy())


class ColumnWrite:
    """A `KVCache`'s buffers as one compiled decode step sees them: every layer's (B, Hkv, capacity, D) keys and
    values, this step's one column written in place at `column` (a (1,) LongTensor, so that one compiled graph
    serves every step), and attention over all `capacity` columns: the caller's 4-D mask hides the ones not yet
    written. The shapes never change from step to step, so the step compiles once."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], column: torch.Tensor):
        self.keys, self.values, self.column = keys, values, column

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys[layer_idx].shape[2] - 1  # past + this step's one token = capacity

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, cache_kwargs=None):
        """key/value (B, Hkv, 1, D) -> the whole buffers (B, Hkv, capacity, D), with them written at `column`."""
        self.keys[layer_idx].index_copy_(2, self.column, key)
        self.values[layer_idx].index_copy_(2, self.column, value)
        return self.keys[layer_idx], self.values[layer_idx]
