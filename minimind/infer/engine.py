"""The decode engine: one running batch of rows over one KV cache, decoded a token per row per step. Everything that
generates goes through it: `generate_tokens` (and so `generate`, `stream`, the Hugging Face bridge, the chat) runs
one batch for one call; the server's worker (`minimind.serve.worker`) keeps one batch for its lifetime and lets
requests join and leave it between steps.

    batch = DecodeBatch(model)
    a = Group(rows=2, do_sample=True, temperature=0.8, seed=0)
    first = batch.add(input_ids, attention_mask, [a])  # prefill two left-padded prompts: their first tokens (2,)
    nxt = batch.step()                                 # one forward of every row's last token: next tokens (B,)
    b = Group(rows=1, repetition_penalty=1.2)
    first_b = batch.add(other_ids, None, [b])          # joins the running batch: its first token (1,)
    nxt = batch.step()                                 # (3,): a's rows, then b's (batch.span(b) says where)
    batch.remove([a])                                  # a's rows leave, and the cache columns only they used

What the batch holds, per row (B rows): the cache (`KVCache`, (B, Hkv, columns, D) per layer), the attention mask
over the cache's columns (B, columns), the row's next position id (B,) and its last token (B,). Rows are left-aligned
to the newest column: a row that joins with a shorter prompt than the batch's columns (or a batch that is shorter
than a newcomer's prompt) is left-padded, and the padding is masked out. Each row counts positions from 0 at its
first real token, so a row gives the same tokens in a batch as alone, whenever it joins and whoever leaves.

Rows come in `Group`s, consecutive in the batch: the rows of one request (or one `generate` call). A group has its
own token choice (greedy, or temperature / top-k / top-p through `sampling.token_chooser` with its own generator),
its own repetition penalty (over the tokens each row has seen: real prompt tokens and the tokens chosen) and its own
`min_new_tokens` (its eos ids are masked out until each row has that many tokens). A group draws for all its rows
at once, so a seeded group gives the same tokens joined or alone as long as its rows stay together: drop a group
whole (`remove`) when reproducibility matters; `keep(rows)` drops single rows too.

Speed: `add(..., capacity=n)` on an empty batch preallocates the cache (and the mask) to n columns, so a decode of
known length never reallocates; a batch with no padded row passes no mask and no position ids, so the model takes
its causal fast path. A batch of one row on a CPU steps, by default, through the native step
(`minimind.kernels.native`: the whole step as one C++ call, dense or mixture-of-experts, fp32, bf16, int8, int4),
built at the first such step and kept on the model (the C++ itself is built once per machine and cached), with no
torch.compile; the cache grows in place if it has no room. Where it does not apply (a GPU, a model it does not
take, no C++ compiler: `native_problem`), or with `native=False`, one row steps through the model's forward as
batches do. The prefill is the model's own forward. `compile=True` runs the prefill under `torch.compile`
(`compiled_forward`) and, for several rows while they are the ones that filled the empty batch (nobody joined or
left) and the preallocated cache has room, each step as one compiled graph of fixed shapes (`compiled_step`: cache
written in place, mask built in the graph; one row takes it where the native step does not apply); with
`compile=True` the capacity is rounded up to a multiple of 256, so that decodes of different lengths share a
graph. `use_cache=False`
recomputes the whole sequence every step (slow: for checking the cache). The engine does not stop rows: the caller
reads the tokens, decides which rows have ended (eos, stop strings, lengths) and removes them. Put the model in
eval mode around the decode (`eval_mode`).
"""

import itertools
import types
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..kernels.attention import use_fast_attention
from ..kernels.matvec import use_row_kernels, with_matvecs
from ..kernels.native import native_step
from ..kv_cache import ColumnWrite, KVCache
from .sampling import (
    apply_repetition_penalty,
    as_id_list,
    check_settings,
    make_generator,
    seen_tokens,
    token_chooser,
)


def compiled_forward(model, freezing: bool = True):
    """`model.forward` under `torch.compile`, compiled once per model (and `freezing`) and kept on it.

    dynamic=True: the KV length grows every step, so one graph serves every length (the prompt and the one-token
    steps get a graph each). Inductor options: `freezing` folds the weights into the graph as constants, which lets
    it prepack them for the CPU matmul kernels; `cpp_wrapper` calls the kernels from C++ rather than Python (less
    overhead per step). The price of freezing: weights changed after the first call are not seen. The first call
    compiles (slow). A model whose layers or tensors changed since (cast, moved, quantized, a layer replaced:
    `model_layout`) gets a new compile, whether or not dynamo's guards would catch the change. `freezing=False`
    compiles without it, for a prefill between native decodes (`DecodeBatch`): those stream the model's own
    weights, and a frozen copy read right after them would come from memory as well. Measurements:
    benchmarks/generate.md."""
    def build():
        import torch._inductor.config as inductor_config

        use_fast_attention(model)
        compiled = torch.compile(own_code(model.forward), dynamic=True)

        def fn(*args, **kwargs):
            # Graphs compile lazily, at a call, and part of Inductor reads its global config then (passing these as
            # torch.compile(options=...) loses freezing): so the options are set around every call.
            with inductor_config.patch(freezing=freezing, cpp_wrapper=True):
                return compiled(*args, **kwargs)
        return fn
    return kept_on(model, "_minimind_compiled_forward" + ("" if freezing else "_unfrozen"), build)


def decode_step(model):
    """One decode step over a preallocated cache, as a function of tensors only:
    `step(ids (B, 1), positions (B, 1), column (1,), rows (B, capacity) bool, keys, values) -> logits (B, V)`.

    Writes the step's keys and values in place at cache column `column` of every layer's buffers (`keys`/`values`,
    (B, Hkv, capacity, D) each: a `KVCache`'s own) and attends over all `capacity` columns, with the mask built
    from `column`: a column counts if `rows` keeps it (padding is False) and it is at or before `column`. No shape
    changes from step to step: `compiled_step` compiles it once for a whole decode."""
    def step(ids, positions, column, rows, keys, values):
        seen = rows & (torch.arange(rows.shape[1], device=rows.device) <= column)  # (B, capacity)
        out = model(ids, attention_mask=seen[:, None, None, :], position_ids=positions,
                    cache=ColumnWrite(keys, values, column), use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]
    return step


def compiled_step(model):
    """`decode_step(model)` under `torch.compile`, compiled once per model and kept on it: a decode runs one graph,
    with no shape guards, no recompiles and no Python of the model's between its kernels (`DecodeBatch` uses it with
    `compile=True`).

    One row (batch-1 decoding) runs `with_matvecs(model)`: every matrix product a fused reduction over the weights
    (`minimind.kernels.matvec`), and attention written out (`minimind.kernels.attention.one_query_attention`), so
    that Inductor compiles the whole step into a few loops; there `freezing` is off, since it would fold a bf16 or
    int8 weight's conversion to float32 into a float32 copy. Several rows run the model's own layers with
    `compiled_forward`'s options (freezing: the weights are constants, prepacked for the CPU matmul kernels). The
    one-row graph takes its Inductor options at compile time rather than from a config patch around every call,
    and plans its intermediate buffers into one allocation a call (`memory_planning`).

    Dynamo's guards on the model's modules are skipped where torch has the filter (2.8 and later), so no call
    checks the model's tensors. Two things make that safe: the step has a code object of its own (dynamo keeps
    graphs on the code object, so models sharing `step`'s code would share graphs with nothing left to tell them
    apart), and each call of `compiled_step` (once a decode) compares the model's layers and tensors with what the
    step was built for, and builds a new one if the model was cast, moved, quantized or given an adapter since.
    What each of these gains: benchmarks/generate.md."""
    def build():
        import torch._inductor.config as inductor_config

        skip_guards = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)
        guards = {"guard_filter_fn": skip_guards} if skip_guards else {}
        step = decode_step(with_matvecs(use_fast_attention(model)))
        one_row = torch.compile(own_code(step), options={**guards, "cpp_wrapper": True, "memory_planning": True})
        rows = torch.compile(own_code(step), options=guards or None)

        def fn(*args):
            if args[0].shape[0] == 1:
                return one_row(*args)
            with inductor_config.patch(freezing=True, cpp_wrapper=True):
                return rows(*args)
        return fn
    return kept_on(model, "_minimind_compiled_step", build)


def kept_on(model, name: str, build):
    """`build()` kept on the model as attribute `name` and reused, unless the attribute was carried over by
    `copy.deepcopy` from another model, or the model's layers or tensors changed since it was built
    (`model_layout`): then it is built again."""
    owner, fn, built_for = getattr(model, name, (None, None, None))
    if owner != id(model) or model_layout(model) != built_for:
        fn = build()
        setattr(model, name, (id(model), fn, model_layout(model)))  # as built (a build may move the tensors)
    return fn


def model_layout(model) -> tuple:
    """What a compiled step depends on beyond its inputs: every module (identity and type) and every parameter and
    buffer (dtype, device, storage). Not the weights' values: a step without freezing reads them at every call."""
    return (tuple((id(m), type(m)) for m in model.modules()),
            tuple((t.dtype, t.device, t.data_ptr()) for t in [*model.parameters(), *model.buffers()]))


_code_copies = itertools.count()


def own_code(fn):
    """`fn` (a function or a bound method) with a code object of its own, a copy under another name, so that
    torch.compile's graphs for it are its own too: dynamo keeps them on the code object, where every model's
    `forward` would otherwise share them (and their limit of 8 recompiles)."""
    if isinstance(fn, types.MethodType):
        return types.MethodType(own_code(fn.__func__), fn.__self__)
    code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}_{next(_code_copies)}")
    copy = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    return copy


@contextmanager
def eval_mode(model):
    """The model in eval mode (no dropout) inside the block, its own mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@dataclass(eq=False)
class Group:
    """Consecutive rows of a batch that choose their tokens together, with these settings (as `generate`'s).

    `seed` makes a generator of its own (or pass `generator`; neither: torch's global random state). The batch
    fills in the rest when the group joins: its chooser, its seen tokens (with a repetition penalty) and its eos ids;
    `steps` counts the tokens each row has chosen."""
    rows: int
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    eos_token_id: int | list[int] | None = None
    seed: int | None = None
    generator: torch.Generator | None = None
    steps: int = field(default=0, init=False)
    choose: Callable | None = field(default=None, init=False, repr=False)  # logits (rows, V) -> tokens (rows,)
    seen: torch.Tensor | None = field(default=None, init=False, repr=False)  # (rows, V + 1) bool; None: no penalty
    eos: torch.Tensor | None = field(default=None, init=False, repr=False)  # (E,) ids kept out for min_new_tokens
    # the exception its token choice raised in a batch of several groups (its rows got token 0 and should leave);
    # the other groups' tokens are unaffected
    failed: Exception | None = field(default=None, init=False, repr=False)

    def _bind(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, vocab_size: int):
        """Build the chooser and the penalty state from the group's prompts, input_ids (rows, T)."""
        check_settings(0, self.temperature, self.top_k, self.top_p, self.repetition_penalty, self.min_new_tokens)
        device = input_ids.device
        generator = self.generator if self.generator is not None else make_generator(self.seed, device)
        self.choose = token_chooser(self.do_sample, self.temperature, self.top_k, self.top_p, generator)
        self.eos = torch.tensor(as_id_list(self.eos_token_id), dtype=torch.long, device=device)
        if self.repetition_penalty != 1.0:
            self.seen = seen_tokens(input_ids, attention_mask, vocab_size)

    def next_tokens(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (rows, V) -> the rows' next tokens (rows,), after the repetition penalty and min_new_tokens."""
        if self.seen is not None:
            logits = apply_repetition_penalty(logits, self.seen[:, :-1], self.repetition_penalty)
        if self.steps < self.min_new_tokens and len(self.eos):
            logits = logits.index_fill(-1, self.eos, float("-inf"))
        tokens = self.constrain(self.choose(logits), logits)
        if self.seen is not None:
            self.seen.scatter_(1, tokens[:, None], True)
        self.steps += 1
        return tokens

    def constrain(self, tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The sampler's `tokens` (rows,), as a subclass may replace them (a grammar: serve.constrain); as they are."""
        return tokens


class DecodeBatch:
    """The running batch: its rows' cache, mask, positions and last tokens, and their groups (see the module's
    docstring). `add` prefills new rows (joining the running batch), `step` decodes one token for every row,
    `remove` / `keep` drop rows. Not thread-safe: one thread drives it."""

    def __init__(self, model, compile: bool = False, use_cache: bool = True, native: bool = True):
        self.model = use_row_kernels(model)  # one-row int8 products through minimind's kernel, where it has one
        self.use_cache = use_cache
        # the native one-row step, built at the first one-row step (`native`); native=False: one row steps through
        # the model's forward as a batch does (eager numerics, for comparing)
        self._native = _UNSET if native else None
        # compiled: the native step first, as building it moves the weights into huge pages, which the compiled
        # functions' layout check would see
        self.forward = compiled_forward(model, freezing=self.native() is None) if compile else model
        self.compiled_step = compiled_step(model) if compile and use_cache else None
        self.groups: list[Group] = []
        self.clear()

    def native(self):
        """The model's whole one-row decode step as one C++ call (`minimind.kernels.native.native_step`: on a CPU,
        for the models it takes), built once per model and kept on it; None where it does not apply (or with
        use_cache=False)."""
        if self._native is _UNSET:
            self._native = kept_on(self.model, "_minimind_native_step", lambda: native_step(self.model)) \
                if self.use_cache else None
        return self._native

    def clear(self):
        """Drop every row: the batch is empty (and holds no memory)."""
        self.groups = []
        self.cache: KVCache | None = None
        self.mask: torch.Tensor | None = None  # (B, width >= columns), ones past `columns`; None: no row is padded
        self.ids: torch.Tensor | None = None  # (B, width >= columns): every token so far, only with use_cache=False
        self.positions: torch.Tensor | None = None  # (B,) each row's next position id (its real tokens so far)
        self.last: torch.Tensor | None = None  # (B,) each row's last token, the input of the next step
        self.columns = 0  # cache columns (the batch's sequence length, padding included)
        self.fixed_rows: torch.Tensor | None = None  # (B, capacity) bool: the compiled step's row mask; None: unused
        self.seen: torch.Tensor | None = None  # (capacity,) bool: the native step's mask of its one row; None: unmade

    @property
    def rows(self) -> int:
        return 0 if self.last is None else self.last.shape[0]

    def span(self, group: Group) -> slice:
        """The batch rows of `group`."""
        start = 0
        for g in self.groups:
            if g is group:
                return slice(start, start + g.rows)
            start += g.rows
        raise ValueError("this group is not in the batch")

    # --- joining --------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def add(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
            groups: Sequence[Group] | None = None, capacity: int = 0) -> torch.Tensor:
        """Prefill left-padded prompts input_ids (b, T) (zeros in attention_mask (b, T) mark padding) as new rows
        at the end of the batch, split into `groups` in order (default: one greedy group of all b rows); returns
        their first tokens (b,). `capacity`: cache columns to preallocate when the batch is empty (0: grow as
        needed). If the prefill fails, the batch is as it was."""
        groups, mask = self._checked(input_ids, attention_mask, groups)  # mask (b, T) long; None: no padding
        b, T = input_ids.shape
        width = max(capacity, T) if not self.groups else T  # buffers preallocated to this many columns
        if self.compiled_step is not None and capacity and not self.groups:
            width = -(-width // STEP_COLUMNS) * STEP_COLUMNS  # shared by decodes of similar lengths: one graph
        cache, first, after, ids = self._prefill(input_ids, mask, groups, width)
        self.seen = None
        if self.groups:
            self._join(input_ids, mask, groups, cache, first, after, ids)
            return first
        # The batch was empty: the newcomers are the batch.
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(b, width - T)], dim=1)  # (b, width)
        self.groups, self.cache, self.mask, self.ids = groups, cache, mask, ids
        self.positions, self.last, self.columns = after, first, T
        if self.compiled_step is not None and capacity:
            self.fixed_rows = torch.ones(b, width, dtype=torch.bool, device=input_ids.device) if mask is None \
                else mask.bool()
        return first

    @staticmethod
    def _checked(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 groups: Sequence[Group] | None) -> tuple[list[Group], torch.Tensor | None]:
        """`add`'s arguments checked (a ValueError says what is wrong): the groups of the new rows (default: one
        greedy group of all of them) and their mask as a long tensor (b, T), or None when no row is padded."""
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be (batch, length) with length >= 1, got shape {tuple(input_ids.shape)}")
        b = input_ids.shape[0]
        groups = list(groups) if groups is not None else [Group(b)]
        if sum(g.rows for g in groups) != b:
            raise ValueError(f"the groups have {sum(g.rows for g in groups)} rows, input_ids {b}")
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids "
                                 f"{tuple(input_ids.shape)}; they must match")
            if bool(attention_mask.all()):
                attention_mask = None  # no padding: the model's causal fast path
            elif not bool(attention_mask[:, -1].all()):
                raise ValueError("a prompt ends in padding: pad the batch on the left "
                                 "(tokenizer.padding_side = 'left')")
        return groups, None if attention_mask is None else attention_mask.long()

    def _prefill(self, input_ids: torch.Tensor, mask: torch.Tensor | None, groups: list[Group], width: int):
        """One forward of the new rows' prompts input_ids (b, T) into a cache of their own with room for `width`
        columns, each group bound to its rows' prompts. Returns (that cache (None with use_cache=False), their first
        tokens (b,), their next position ids (b,), their tokens (b, width) with use_cache=False else None).
        Changes nothing in the batch."""
        b, T = input_ids.shape
        positions = None if mask is None else (mask.cumsum(-1) - 1).clamp(min=0)  # (b, T) from 0 at the first token
        cache = KVCache(self.model.config.num_hidden_layers, capacity=width) if self.use_cache else None
        logits = self._forward(input_ids, mask, positions, cache)  # (b, V)
        start = 0
        for g in groups:
            g._bind(input_ids[start:start + g.rows], None if mask is None else mask[start:start + g.rows],
                    self.model.config.vocab_size)
            start += g.rows
        first = self._choose(groups, logits)  # (b,)
        # (b,) each row's next position id: its real tokens so far
        after = torch.full((b,), T, dtype=torch.long, device=input_ids.device) if mask is None else mask.sum(-1)
        ids = None
        if not self.use_cache:
            ids = input_ids.new_zeros(b, width)  # (b, width)
            ids[:, :T] = input_ids
        return cache, first, after, ids

    def _join(self, input_ids: torch.Tensor, mask: torch.Tensor | None, groups: list[Group], cache: KVCache | None,
              first: torch.Tensor, after: torch.Tensor, ids: torch.Tensor | None):
        """Append prefilled rows (`_prefill`'s results for input_ids (b, T)) to a running batch. The side with
        fewer columns is left-padded (and masked), so every row's last token is in the last column; positions need
        no change, as they count real tokens only. The compiled step is off from here on (the rows changed)."""
        self.fixed_rows = None  # the rows changed: the general step from here on
        b, T = input_ids.shape
        device = input_ids.device
        t, B = max(self.columns, T), self.rows
        joined_mask = None
        if self.mask is not None or mask is not None or self.columns != T:
            old = self.mask[:, :self.columns] if self.mask is not None else \
                torch.ones(B, self.columns, dtype=torch.long, device=device)
            new = mask if mask is not None else torch.ones(b, T, dtype=torch.long, device=device)
            joined_mask = torch.cat([F.pad(old, (t - self.columns, 0)), F.pad(new, (t - T, 0))])  # (B + b, t)
        if self.use_cache:
            self.cache = KVCache.cat([self.cache, cache])
        else:
            self.ids = torch.cat([F.pad(self.ids[:, :self.columns], (t - self.columns, 0)),
                                  F.pad(ids[:, :T], (t - T, 0))])  # (B + b, t)
        self.mask = joined_mask
        self.positions = torch.cat([self.positions, after])
        self.last = torch.cat([self.last, first])
        self.groups = self.groups + groups
        self.columns = t

    # --- decoding -------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> torch.Tensor:
        """One forward of every row's last token; returns every row's next token (B,)."""
        t = self.columns + 1  # columns once the last tokens are in
        if self.rows == 1 and self.native() is not None:
            logits = self._native_step(t)
        elif self.fixed_rows is not None and t <= self.fixed_rows.shape[1]:
            column = torch.tensor([self.columns], device=self.last.device)
            logits = self.compiled_step(self.last[:, None], self.positions[:, None], column, self.fixed_rows,
                                        self.cache.keys, self.cache.values)
            self.cache.lengths = [t] * len(self.cache.lengths)
        else:
            logits = self._general_step(t)
        self.columns = t
        self.positions = self.positions + 1
        self.last = self._choose(self.groups, logits)
        return self.last

    def _native_step(self, t: int) -> torch.Tensor:
        """The one row's step through the native op, into its cache in place (grown first if it has no room for
        column t - 1: a batch that rows joined or left holds exactly its columns). Returns its logits (1, V)."""
        cache = self.cache
        if cache.keys[0].shape[2] < t:
            for buffers in (cache.keys, cache.values):
                buffers[:] = [widen_columns(b, t, self.columns) for b in buffers]
            self.seen = None
        if self.seen is None:  # the row's real columns: all but its padding (every column from `columns` on)
            self.seen = torch.ones(cache.keys[0].shape[2], dtype=torch.bool)
            if self.mask is not None:
                self.seen[:self.columns] = self.mask[0, :self.columns].bool()
        logits = self.native()(int(self.last), int(self.positions), self.columns, self.seen, cache.keys,
                               cache.values)
        cache.lengths = [t] * len(cache.lengths)
        if self.mask is not None:
            self.mask = widen(self.mask, t, 1)
        return logits

    def _general_step(self, t: int) -> torch.Tensor:
        """Every row's step through the model's forward (`compile=True`: compiled), t columns after it."""
        mask = positions = None
        if self.mask is not None:
            self.mask = widen(self.mask, t, 1)
            mask = self.mask[:, :t]  # (B, t)
        if self.use_cache:
            x = self.last[:, None]  # (B, 1)
            if mask is not None:
                positions = self.positions[:, None]  # (B, 1)
        else:  # the whole sequence again
            self.ids = widen(self.ids, t, 0)
            self.ids[:, t - 1] = self.last
            x = self.ids[:, :t]  # (B, t)
            if mask is not None:
                positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, t)
        return self._forward(x, mask, positions, self.cache)  # (B, V)

    def _forward(self, ids, mask, positions, cache) -> torch.Tensor:
        """ids (B, T) -> the logits of each row's last token (B, V), appending to `cache`."""
        return self.forward(ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=self.use_cache,
                            logits_to_keep=1).logits[:, -1]

    @staticmethod
    def _choose(groups: list[Group], logits: torch.Tensor) -> torch.Tensor:
        """logits (B, V) -> next tokens (B,), each group's rows with the group's own settings. With several groups,
        one whose choice raises is marked `failed` (its rows get token 0) and the others go on."""
        if len(groups) == 1:
            return groups[0].next_tokens(logits)
        out = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        start = 0
        for g in groups:
            if g.failed is None:
                try:
                    out[start:start + g.rows] = g.next_tokens(logits[start:start + g.rows])
                except Exception as e:  # one request's settings or grammar must not fail its neighbours
                    g.failed = e
            start += g.rows
        return out

    # --- leaving --------------------------------------------------------------------------------------------------

    def remove(self, groups: Sequence[Group]):
        """Drop these groups' rows (see `keep`)."""
        gone = {id(g) for g in groups}
        rows, start = [], 0
        for g in self.groups:
            if id(g) not in gone:
                rows.extend(range(start, start + g.rows))
            start += g.rows
        self.keep(rows)

    @torch.inference_mode()
    def keep(self, rows: Sequence[int]):
        """Keep only the batch rows `rows` (ascending indices), and drop the cache columns that no row kept uses.
        The kept rows' buffers are copied to exactly their size, so the dropped ones free their memory."""
        rows = list(rows)
        if rows == list(range(self.rows)):
            return
        if not rows:
            self.clear()
            return
        if any(a >= b for a, b in zip(rows, rows[1:])) or rows[0] < 0 or rows[-1] >= self.rows:
            raise ValueError(f"rows to keep must be ascending indices below {self.rows}, got {rows}")
        groups, start = [], 0
        for g in self.groups:
            mine = [r - start for r in rows if start <= r < start + g.rows]
            start += g.rows
            if mine:
                if len(mine) < g.rows:
                    g.rows = len(mine)
                    g.seen = g.seen[mine] if g.seen is not None else None
                groups.append(g)
        index = torch.tensor(rows, dtype=torch.long, device=self.last.device)
        first = 0  # the first column some kept row uses
        if self.mask is not None:
            mask = self.mask[:, :self.columns].index_select(0, index)  # (b, columns)
            first = int(mask.any(0).long().argmax())
            self.mask = None if bool(mask[:, first:].all()) else mask[:, first:].clone()
        if self.cache is not None:
            self.cache.select(index, first)
        if self.ids is not None:
            self.ids = self.ids[:, first:self.columns].index_select(0, index)
        self.groups, self.columns, self.fixed_rows, self.seen = groups, self.columns - first, None, None
        self.positions, self.last = self.positions[index], self.last[index]


STEP_COLUMNS = 256  # with compile=True, preallocated caches are a multiple of this many columns
_UNSET = object()


def widen_columns(buffer: torch.Tensor, width: int, used: int) -> torch.Tensor:
    """A cache buffer (B, Hkv, w, D) as a zeroed one at least `width` columns wide (doubling), its first `used`
    columns copied."""
    out = buffer.new_zeros(*buffer.shape[:2], max(width, 2 * buffer.shape[2]), buffer.shape[3])
    out[:, :, :used] = buffer[:, :, :used]
    return out


def widen(buffer: torch.Tensor, width: int, fill: int) -> torch.Tensor:
    """buffer (B, w) itself if w >= width, else a copy at least `width` wide (doubling), new columns `fill`ed."""
    if buffer.shape[1] >= width:
        return buffer
    out = buffer.new_full((buffer.shape[0], max(width, 2 * buffer.shape[1])), fill)
    out[:, :buffer.shape[1]] = buffer
    return out
