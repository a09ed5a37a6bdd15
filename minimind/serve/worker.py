"""The batching worker: one thread owns the model and decodes every request's rows together.

Batching (continuous, at each decode step): a request is validated and tokenized in the web server's event loop,
then queued as a `Job`. Before every decode step the worker lets the oldest waiting jobs join the running batch, in
order, while their rows fit (--max_batch rows; a job that does not fit waits, and the ones behind it wait behind
it): their prompts are prefilled as one left-padded batch, each job a `Group` of rows, and join the running batch.
The batch mechanics (cache, attention mask, positions, joining, a decode step, sampling, dropping rows and cache
columns) are the decode engine's, `minimind.infer.engine.DecodeBatch`, the same that `minimind.infer.generate`
runs, so a row gives the same tokens as alone; this module keeps the worker thread, the queue, the text streams,
the events and the stats. Each row keeps its own max_tokens, stop strings and text stream (UTF-8 safe,
`TextStream`) and ends on its own; each job samples its rows with its own temperature / top_k /
top_p / repetition penalty and its own seeded generator, so a seeded request gives the same text joined or alone;
a job with a grammar (JSON by constrained decoding, `constrain.py`) has its rows choose only tokens that keep the
answer valid.
A job leaves the batch once all its rows have ended (until then its ended rows still draw, as they would alone),
and the cache columns that no remaining row uses are dropped with it: the cache holds at most the context window
however long the server stays busy. So no request waits for another's long answer, only for rows to free up.
`/health` counts requests (jobs decoded), batches (started from idle), joined_running (jobs that joined a batch
already decoding), largest_batch (rows), largest_cache (cache columns) and cancelled. Text pieces and endings go
back to the request's event loop through a thread-safe callback. A client that disconnects marks its job
cancelled: its rows leave at the next step. Ctrl-C ends the answers in progress with an error event (503) and
stops.
"""

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

# --- the batching worker --------------------------------------------------------------------------------------------

@dataclass
class Job:
    """One request's work: a prompt per row (a prompt repeated n times for n choices) and its settings.

    `emit(event)` is called from the worker thread: ("piece", row, text), ("end", row, finish_reason,
    completion_tokens) or ("error", message, HTTP status)."""
    prompts: list[list[int]]
    max_tokens: int
    emit: Callable
    stops: list[str] = field(default_factory=list)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    record: list[list[int]] | None = None  # a list per row: the worker appends the row's tokens (eos left out)
    grammar: object = None  # a `constrain.Grammar` every row's answer is decoded under (JSON), or None
    cancelled: bool = False  # the client left (or the answer is complete): the worker drops its rows
    finished: bool = False  # every row has ended

    @property
    def rows(self) -> int:
        return len(self.prompts)

    @property
    def longest(self) -> int:
        return max(len(p) for p in self.prompts)


@dataclass(eq=False)
class Member:
    """A job in the running batch and its decoding state; its rows are consecutive rows of the batch."""
    job: Job
    group: object  # its rows in the decode batch (a minimind.infer.engine.Group), with the job's sampling settings
    streams: list  # a TextStream per row
    counts: list[int]  # tokens generated per row
    done: list[bool]  # rows that have ended


class Worker:
    """The worker thread that owns the model: it lets waiting jobs join the running batch and decodes it step by
    step (see the module's docstring). `submit(job)` from any thread; `stats` counts requests (jobs decoded),
    batches (started from idle), jobs that joined a batch already decoding, the largest batch (rows), the most
    KV-cache columns the batch has held, and requests whose client left before the end."""

    def __init__(self, model, tokenizer, max_batch: int = 8, compile: bool = False):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.model, self.tokenizer, self.max_batch, self.compile = model, tokenizer, max_batch, compile
        self.context = model.config.max_position_embeddings
        self.eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        self.queue: queue.Queue = queue.Queue()  # jobs from the request handlers; None: stop
        self.waiting: deque = deque()  # jobs taken from the queue that did not fit the running batch yet
        self.lock = threading.Lock()  # held while the worker lets jobs join or decodes a step
        self.pause = threading.Event()  # `paused()` waits for the lock
        self.stopping = False
        self.texts: list | None = None  # each token's text, for constrained decoding (made at its first use)
        self.stats = {"requests": 0, "batches": 0, "joined_running": 0, "largest_batch": 0, "largest_cache": 0,
                      "cancelled": 0}
        # The running batch: its jobs in row order, and their rows' decode state (cache, mask, positions, last
        # tokens, sampling: minimind.infer.engine.DecodeBatch), created by the worker.
        self.members: list[Member] = []
        self.batch = None
        self.thread = threading.Thread(target=self._run, name="minimind-decode", daemon=True)

    def start(self):
        """Start the worker thread, the native one-row step built first (once per machine, cached; one line), so
        that no request waits for a build."""
        from ..infer.engine import DecodeBatch

        self.batch = DecodeBatch(self.model, compile=self.compile)
        self.batch.native()
        self.thread.start()

    def shutdown(self):
        """Stop soon, without waiting: the running batch ends after its current step, and its requests and the
        waiting ones are answered with an error (503)."""
        self.stopping = True
        self.queue.put(None)

    def stop(self):
        self.shutdown()
        self.thread.join(timeout=10)

    def submit(self, job: Job):
        self.queue.put(job)

    def queued(self) -> int:
        """Jobs waiting to join."""
        return self.queue.qsize() + len(self.waiting)

    def columns(self) -> int:
        """KV-cache columns the running batch holds now (0 when idle)."""
        batch = self.batch
        return 0 if batch is None else batch.columns

    @contextmanager
    def paused(self):
        """No job joins and no decode step runs inside this block (jobs queue up); the step running finishes
        first."""
        self.pause.set()  # the worker steps aside between steps until we hold the lock
        with self.lock:
            self.pause.clear()
            yield

    def _run(self):
        import torch

        self.model.eval()
        with torch.inference_mode():
            while True:
                idle = not self.members and not self.waiting
                job = self.queue.get() if idle else None  # idle: wait for a request
                if self.pause.is_set():
                    time.sleep(0.001)
                with self.lock:
                    if idle:
                        self.waiting.appendleft(job)
                    if self.stopping:
                        break
                    try:
                        self._admit()
                        self._step()
                    except Exception as e:  # a bug outside a forward pass: fail the running requests, keep serving
                        for member in self.members:
                            member.job.emit(("error", f"generation failed: {type(e).__name__}: {e}", 500))
                        self._clear()
        # shutting down: answer the running requests and every one still waiting
        for member in self.members:
            member.job.emit(("error", "the server is shutting down; the answer was cut short", 503))
        self._clear()
        while not self.queue.empty():
            self.waiting.append(self.queue.get_nowait())
        for job in self.waiting:
            if job is not None:
                job.emit(("error", "the server is shutting down", 503))

    def _admit(self):
        """The oldest waiting jobs, in order, while their rows fit beside the running batch (--max_batch), join it:
        their prompts are prefilled as one left-padded batch and each row gets its first token."""
        rows = sum(m.job.rows for m in self.members)
        new = []
        while True:
            if not self.waiting:
                try:
                    self.waiting.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            job = self.waiting[0]
            if job is None:
                break
            if job.cancelled:
                self.waiting.popleft()
                continue
            if rows + job.rows > self.max_batch:  # (a job alone always fits: n x prompts <= max_batch)
                break  # the oldest waiting job joins first when rows free up: no job waits forever
            self.waiting.popleft()
            new.append(job)
            rows += job.rows
        if not new:
            return
        self.stats["requests"] += len(new)
        if self.members:
            self.stats["joined_running"] += len(new)
        else:
            self.stats["batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], rows)
        try:
            self._join(new)
        except Exception as e:  # the newcomers get the error; the running batch goes on
            for job in new:
                job.emit(("error", f"generation failed: {type(e).__name__}: {e}", 500))
        self._leave()

    def _join(self, jobs: list[Job]):
        """Prefill the jobs' prompts as one left-padded batch, a group of rows per job, joining the running batch."""
        from ..infer.engine import DecodeBatch
        from ..infer.generate import encode_prompts
        from ..infer.textstream import TextStream

        if self.batch is None:
            self.batch = DecodeBatch(self.model, compile=self.compile)
        device = next(self.model.parameters()).device
        ids, mask = encode_prompts(self.tokenizer, [p for job in jobs for p in job.prompts], device=device)  # (b, T)
        groups = [self._group(job) for job in jobs]
        first = self.batch.add(ids, mask, groups)  # (b,)
        members = [Member(job, group, [TextStream(self.tokenizer, job.stops) for _ in job.prompts], [0] * job.rows,
                          [False] * job.rows) for job, group in zip(jobs, groups)]
        self.members = self.members + members
        self._emit(members, first.tolist())

    def _group(self, job: Job):
        """The decode-engine group of the job's rows, with its sampling settings; a `ConstrainedGroup` with a
        `RowConstraint` per row when the job has a grammar."""
        settings = dict(do_sample=job.temperature > 0, temperature=job.temperature, top_k=job.top_k or None,
                        top_p=job.top_p, repetition_penalty=job.repetition_penalty, seed=job.seed)
        if job.grammar is None:
            from ..infer.engine import Group

            return Group(job.rows, **settings)
        from .constrain import ConstrainedGroup, RowConstraint, token_texts

        if self.texts is None:
            self.texts = token_texts(self.tokenizer, self.model.config.vocab_size)
        rows = [RowConstraint(job.grammar, self.texts, self.eos, job.max_tokens) for _ in range(job.rows)]
        return ConstrainedGroup(job.rows, **settings, constraints=rows)

    def _step(self):
        """One decode step: one forward of every row's last token, then each job's rows choose their next."""
        if not self.members:
            return
        try:
            tokens = self.batch.step()  # (B,)
        except Exception as e:  # a failed forward answers the running requests with an error; the worker goes on
            for member in self.members:
                member.job.emit(("error", f"generation failed: {type(e).__name__}: {e}", 500))
            self._clear()
            return
        self._emit(self.members, tokens.tolist())
        self.stats["largest_cache"] = max(self.stats["largest_cache"], self.batch.columns)
        self._leave()

    def _emit(self, members: list[Member], tokens: list[int]):
        """Send each row's new token as text (or its end) to its request. A job whose token choice failed (its
        group's `failed`: a bad setting or grammar, one request's own) gets the error instead, and leaves."""
        for m in members:
            if m.group.failed is not None and not m.job.cancelled:
                e = m.group.failed
                m.job.emit(("error", f"generation failed: {type(e).__name__}: {e}", 500))
                m.job.cancelled = True  # its rows leave the batch with `_leave`
        b = 0
        for m in members:
            job = m.job
            for i in range(job.rows):
                token, b = tokens[b], b + 1
                if m.done[i] or job.cancelled:
                    continue
                m.counts[i] += 1
                if job.record is not None and token not in self.eos:
                    job.record[i].append(token)
                reason = None
                if token in self.eos:
                    piece, reason = m.streams[i].finish(), "stop"
                else:
                    piece = m.streams[i].push(token)
                    if m.streams[i].stopped:
                        reason = "stop"
                    elif m.counts[i] == job.max_tokens:
                        piece, reason = piece + m.streams[i].finish(), "length"
                if piece:
                    job.emit(("piece", i, piece))
                if reason:
                    m.done[i] = True
                    job.emit(("end", i, reason, m.counts[i]))

    def _leave(self):
        """Jobs whose rows have all ended (or whose client left) leave the batch, and so do the cache columns that
        no remaining row uses. A job's rows stay until all have ended, so its generator draws as it would alone."""
        stay = [not m.job.cancelled and not all(m.done) for m in self.members]  # once: a client may leave meanwhile
        if all(stay):
            return
        self.batch.remove([m.group for m, keep in zip(self.members, stay) if not keep])
        self.members = [m for m, keep in zip(self.members, stay) if keep]

    def _clear(self):
        self.members = []
        if self.batch is not None:
            self.batch.clear()
