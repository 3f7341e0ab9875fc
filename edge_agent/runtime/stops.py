"""Stop strings in a stream of text pieces.

A stop string may arrive split across tokens, so text that could still be the start of
a stop string is held back until it either completes one (and is cut) or cannot.
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._pending = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add a piece; return the text now safe to emit. Sets `stopped` on a match."""
        if self.stopped:
            return ""
        if not self._stops:
            return piece
        text = self._pending + piece
        cut = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return text[:cut]
        hold = self._longest_partial(text)
        self._pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        """The end of the stream: held-back text was not a stop string after all."""
        text, self._pending = self._pending, ""
        return "" if self.stopped else text

    def _longest_partial(self, text: str) -> int:
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:size]):
                    best = size
                    break
        return best
