"""Prompt cache: finished generators kept so a later prompt that starts the same way skips
re-reading the shared prefix.

onnxruntime-genai 0.18 can rewind a generator (`Generator.rewind_to`) to any earlier length
and append other tokens; on CPU the logits then equal a fresh prefill's on the tiny test
model (checked by the property test). Not bit for bit on the small shape: there the
logits depend in their last bits on how the tokens were split into prefill chunks and
decode steps (up to 0.05 apart of a 2.7 maximum, whether or not the cache is involved:
a prefill split at 155 of 323 tokens differs, one split at 250 does not), so a greedy
near tie may resolve differently with the cache, as llama.cpp warns for its own.
`snapshot_state` returns nothing usable from Python, and a generator
cannot be copied, so an entry is one whole kept generator: a hit takes it out of the cache,
rewinds it to the common prefix, appends the rest of the new prompt, and the request runs
on it alone; when the request ends the generator comes back with its new tokens. Entries
are per loaded model (each scheduler owns one cache), so nothing crosses models, versions
or the settings a generator was built with.

Memory: the builder's models share one KV buffer sized for the generator's `max_length`
(`past_present_share_buffer`), which decodes faster at long contexts than a growing buffer
(measured 83 vs 56 tok/s after 1,000 tokens on the small shape), so an entry costs
`max_length x bytes per token` whatever it holds. The budget counts exactly that, plus
the kept logits row.

The same prompt again (an exact hit): the KV cache already holds every prompt token, but
a rewound generator has no logits to sample from (`set_logits` is refused until the model
has run), so rewinding to n-1 would recompute the last prompt token, one decode step before
the first token. Instead each entry keeps the logits row its prompt ended with (one float
per vocabulary entry, taken before the engine's sampling changes it in place), and a greedy
request takes its first token from that row (argmax, as the engine's greedy search; the
end-of-sequence ids masked when the request forbids them, as the engine's `min_length`).
Sampled requests still recompute: their first token must come from the engine's sampler.

Guided requests (`response_format`, `tools`): the grammar is part of the generator's
parameters, so a guided request can only continue a generator built with the same grammar
(an agent's tool loop sends the same tools every turn). `rewind_to` restarts the grammar:
after a rewind a kept guided generator decodes exactly as a fresh one (checked by a test).
Their first token always comes from the engine, which applies the grammar's mask; the
kept logits row is the unmasked one.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.runtime.sampling import BatchKey, SamplingParams

# A shorter common prefix (a chat template's opening tokens) is not worth giving up a
# place in a batch for: the request is decoded batched, from scratch, instead.
MIN_REUSED_TOKENS = 16

Tokens = npt.NDArray[np.int32]
Logits = npt.NDArray[np.float32]


@dataclass(eq=False)
class CachedGenerator:
    """A generator whose KV cache holds `tokens`, built with search options `key`."""

    generator: Any
    key: BatchKey
    max_length: int
    tokens: Tokens
    nbytes: int
    # The logits row after `tokens[:logits_at]` (the prompt that built the entry): what
    # that prompt's first token was drawn from. None: not kept.
    logits: Logits | None = None
    logits_at: int = 0


@dataclass(frozen=True)
class Hit:
    entry: CachedGenerator
    reused: int  # leading prompt tokens whose KV cache is already computed
    # The whole prompt is cached and the entry kept its logits: no model step before the
    # first token. Only when the prompt is exactly the one whose logits were kept: a
    # longer prompt that merely shares them as a prefix (a chat's next turn after an
    # empty answer) must still have its own tokens appended.
    exact: bool = False


class PromptCache:
    """LRU within `budget_bytes`. The decode thread takes and puts; any thread may read."""

    def __init__(self, budget_bytes: int, bytes_per_token: int) -> None:
        self.budget_bytes = budget_bytes
        self.bytes_per_token = bytes_per_token
        self._entries: OrderedDict[int, CachedGenerator] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0 and self.bytes_per_token > 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def newest(self) -> CachedGenerator | None:
        with self._lock:
            return next(reversed(self._entries.values()), None)

    def entry_bytes(self, max_length: int) -> int:
        return max_length * self.bytes_per_token

    def take(
        self, prompt: list[int], key: BatchKey, needed_length: int, *, exact_ok: bool = False
    ) -> Hit | None:
        """The entry sharing the longest prefix with `prompt`, removed from the cache.

        Only entries built with the same search options and long enough for the whole
        request qualify. At least one prompt token is left to compute, since the next
        token's logits come from it, unless `exact_ok` and the entry kept the logits of
        exactly this prompt (`Hit.exact`).
        """
        if not self.enabled or len(prompt) < 2:
            return None
        wanted = np.asarray(prompt, dtype=np.int32)
        with self._lock:
            best: tuple[int, int, bool] | None = None
            for ident, entry in self._entries.items():
                if entry.key != key or entry.max_length < needed_length:
                    continue
                common = _common_prefix(entry.tokens, wanted)
                exact = (
                    exact_ok
                    and entry.logits is not None
                    and entry.logits_at == len(prompt) <= common
                )
                reused = len(prompt) if exact else min(common, len(prompt) - 1)
                if reused >= MIN_REUSED_TOKENS and (best is None or reused > best[1]):
                    best = (ident, reused, exact)
            if best is None:
                return None
            entry = self._entries.pop(best[0])
            self._bytes -= entry.nbytes
        return Hit(entry, best[1], best[2])

    def put(self, entry: CachedGenerator) -> None:
        """Keep `entry` as the most recent; evict the least recent beyond the budget."""
        if not self.enabled or entry.nbytes > self.budget_bytes:
            return
        with self._lock:
            self._entries[id(entry)] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.budget_bytes:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


def cache_key(params: SamplingParams) -> BatchKey | None:
    """Requests with equal keys may continue one kept generator; None: never kept.

    The sampling's own reuse key, plus the grammar for a guided request: a generator
    keeps the grammar it was built with.
    """
    if not params.guided:
        return params.reuse_key()
    plain = dataclasses.replace(params, json_schema=None, lark_grammar=None).reuse_key()
    if plain is None:
        return None
    return (*plain, "guided", params.json_schema, params.lark_grammar)


def _common_prefix(a: Tokens, b: Tokens) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


def greedy_first_token(logits: Logits, eos_token_ids: frozenset[int], ignore_eos: bool) -> int:
    """The token the engine's greedy search picks from `logits`: the first maximum, with
    the end-of-sequence ids excluded while `min_length` forbids them (`ignore_eos`)."""
    row = logits.reshape(-1)
    if ignore_eos and eos_token_ids:
        row = row.copy()
        row[list(eos_token_ids)] = -np.inf
    return int(np.argmax(row))


def logits_row(generator: Any) -> Logits:
    """A copy of the logits the generator's next sample would be drawn from: taken before
    sampling, which transforms the engine's buffer in place."""
    return np.array(generator.get_logits(), dtype=np.float32).reshape(-1)
