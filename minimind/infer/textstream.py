"""Token ids to text, incrementally: `TextStream` holds back an incomplete UTF-8 character and any tail that may
begin a stop string, so streamed text never splits a character and stop strings end the text without being part
of it.
"""

from collections.abc import Iterable

from .sampling import as_stop_list

# --- text: incremental detokenizing, stop strings, streaming -----------------------------------------------------

class TextStream:
    """Token ids in, text pieces out, for one sequence.

    `push(id)` returns the new text that is safe to show: an incomplete UTF-8 character (a byte-level token may hold
    part of one) is held back until it completes, and so is any tail that could be the start of a stop string.
    When a stop string appears, the text ends just before it and `stopped` turns True. `finish()` returns the
    rest. The pieces joined equal `tokenizer.decode(ids, skip_special_tokens=True)` cut before the first stop string.

    Each push decodes only the tokens since the last clean character boundary (vLLM's prefix/read offsets), so
    streaming costs O(1) per token, not O(length).
    """

    def __init__(self, tokenizer, stop_strings: Iterable[str] = (), skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.stops = as_stop_list(stop_strings)
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = self.read = 0  # ids[prefix:read] decoded to text already; read is a character boundary
        self.text = ""  # the text decoded so far (complete characters)
        self.emitted = 0  # characters of self.text handed out
        self.stopped = False

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(int(token_id))
        known = self._decode(self.ids[self.prefix:self.read])
        new = self._decode(self.ids[self.prefix:])
        if len(new) > len(known) and not new.endswith("\ufffd"):  # "\ufffd" at the end: an unfinished character
            self.text += new[len(known):]
            self.prefix, self.read = self.read, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """The text held back so far (an unfinished character comes out as U+FFFD, as `decode` gives it)."""
        if not self.stopped:
            known = self._decode(self.ids[self.prefix:self.read])
            new = self._decode(self.ids[self.prefix:])
            self.text += new[len(known):]
            self.prefix = self.read = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        end = len(self.text)
        if self.stops and not self.stopped:
            # A stop string cannot start before `emitted`: a possible start is never handed out (below).
            hits = [i for i in (self.text.find(s, self.emitted) for s in self.stops) if i >= 0]
            if hits:
                end = min(hits)
                self.text, self.stopped = self.text[:end], True
            elif not final:
                end -= self._held_back()
        piece = self.text[self.emitted:end]
        self.emitted = end
        return piece

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of some stop string."""
        longest = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.text) - self.emitted), longest, -1):
                if self.text.endswith(s[:n]):
                    longest = n
                    break
        return longest
