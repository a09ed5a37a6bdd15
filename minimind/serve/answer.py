"""One job's answer as the worker makes it: its events named (`Piece`, `End`), gathered into one OpenAI response
body or streamed as server-sent events in OpenAI's chunk format (`Answer`).
"""

import asyncio
import json
from typing import NamedTuple

from .protocol import APIError
from .reply import ChatReader
from .worker import Job, Worker

# --- the worker's events, named -------------------------------------------------------------------------------------

class Piece(NamedTuple):
    row: int
    text: str


class End(NamedTuple):
    row: int
    reason: str  # finish_reason: "stop" or "length"
    tokens: int  # completion tokens of the row


def named(event: tuple) -> Piece | End:
    """A worker event (see `Job`) as a `Piece` or an `End`; an error event raises its APIError."""
    kind, *fields = event
    if kind == "error":
        message, status = fields
        raise APIError(status, message, type="server_error")
    return Piece(*fields) if kind == "piece" else End(*fields)


class Answer:
    """One job's answer as it comes from the worker: gathered whole (`whole`) or streamed as server-sent events in
    OpenAI's chunk format (`stream`)."""

    def __init__(self, engine: Worker, job: Job, events: asyncio.Queue, head: dict, chat: bool, prompt_tokens: int,
                 reader: ChatReader | None = None):
        self.engine, self.job, self.events, self.head, self.chat = engine, job, events, head, chat
        self.prompt_tokens, self.counts = prompt_tokens, [0] * job.rows
        self.reader = reader or ChatReader(job.rows) if chat else None

    def usage(self) -> dict:
        completion = sum(self.counts)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    async def until_done(self):
        """The job's events, named, until every row has ended; an error event raises."""
        ended = 0
        while ended < self.job.rows:
            try:
                event = named(await self.events.get())
            except APIError:
                self.job.finished = True
                raise
            if isinstance(event, End):
                ended += 1
                self.counts[event.row] = event.tokens
            yield event
        self.job.finished = True

    def leave(self):
        """The answer is complete, or its client has left: the worker drops the job's rows."""
        if not self.job.finished and not self.job.cancelled:
            self.engine.stats["cancelled"] += 1
        self.job.cancelled = True

    async def whole(self) -> dict:
        texts, reasons = [""] * self.job.rows, [None] * self.job.rows
        try:
            async for event in self.until_done():
                if isinstance(event, Piece):
                    texts[event.row] += event.text
                else:
                    reasons[event.row] = event.reason
        finally:
            self.leave()
        if self.chat:
            for i, text in enumerate(texts):
                self.reader.push(i, text)
                self.reader.end(i)
                reasons[i] = self.reader.finish_reason(i, reasons[i])
        choices = [{"index": i, **({"message": self.reader.message(i)} if self.chat else {"text": text}),
                    "logprobs": None, "finish_reason": reason} for i, (text, reason) in enumerate(zip(texts, reasons))]
        return {**self.head, "choices": choices, "usage": self.usage()}

    def chunk(self, choices: list[dict], **extra) -> str:
        """One server-sent event of OpenAI's chunk format."""
        body = {**self.head, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "choices": choices, **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def choice(self, index: int, text: str | dict | None = None, finish_reason: str | None = None,
               role: bool = False):
        if self.chat:  # text: a delta of the ChatReader's
            delta = {"role": "assistant", "content": ""} if role else ({} if text is None else text)
            body = {"delta": delta}
        else:
            body = {"text": text or ""}
        return {"index": index, **body, "logprobs": None, "finish_reason": finish_reason}

    async def stream(self, include_usage: bool):
        try:
            if self.chat:
                for i in range(self.job.rows):
                    yield self.chunk([self.choice(i, role=True)])
            async for event in self.until_done():
                if not self.chat:
                    yield self.chunk([self.choice(event.row, event.text)] if isinstance(event, Piece) else
                                     [self.choice(event.row, finish_reason=event.reason)])
                    continue
                ended = isinstance(event, End)
                for delta in self.reader.end(event.row) if ended else self.reader.push(event.row, event.text):
                    yield self.chunk([self.choice(event.row, delta)])
                if ended:
                    reason = self.reader.finish_reason(event.row, event.reason)
                    yield self.chunk([self.choice(event.row, finish_reason=reason)])
            if include_usage:
                yield self.chunk([], usage=self.usage())
        except APIError as e:  # the status line has gone out: the error travels as an event
            yield f"data: {json.dumps(e.body())}\n\n"
        finally:
            self.leave()
        yield "data: [DONE]\n\n"
