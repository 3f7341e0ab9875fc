"""Admission and decoding: a bounded queue in front of one decode thread.

One thread owns every onnxruntime-genai generator, so concurrent clients never share
one and never oversubscribe the cores. Requests that arrive together and sample alike
are decoded as one batch: a batch of four reads the weights once for four tokens, which
on a memory-bound CPU is nearly twice the throughput of taking turns. Every batch is
stepped in turn, so a newcomer starts without waiting for a long answer to finish.

The prompt cache (prompt_cache.py) keeps generators that decoded alone. A request that
shares a long enough prefix with one runs alone on it, skipping that prefix's prefill;
requests with no such prefix are batched as before. A batch's generator is not kept:
its rows are padded and onnxruntime-genai cannot split them into single sequences.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from edge_agent.runtime.engine import LoadedModel
from edge_agent.runtime.errors import ContextLengthExceeded, NotReady, Overloaded
from edge_agent.runtime.prompt_cache import (
    CachedGenerator,
    Logits,
    PromptCache,
    cache_key,
    greedy_first_token,
    logits_row,
)
from edge_agent.runtime.sampling import BatchKey, SamplingParams
from edge_agent.runtime.stops import StopMatcher

log = logging.getLogger(__name__)

# onnxruntime-genai keeps the GIL while it computes a token, so a consumer on another
# thread (the HTTP event loop) could not send a client its first text until the next
# step ends, a whole token's time later. After a sequence's first text the decode thread
# waits, this long at most, for the consumer to take it; later tokens need no such care.
FIRST_TEXT_HANDOFF_SECONDS = 0.02

# A generator that may be kept is built this many tokens longer than its request needs,
# so the conversation's next turn (history, new message, answer) still fits in it.
CACHE_HEADROOM_TOKENS = 1024


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"
    ERROR = "error"


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log probability under the model, and the likeliest tokens."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class TextDelta:
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()  # the tokens behind `text`, when asked for


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None
    cached_tokens: int = 0  # prompt tokens whose prefill the prompt cache saved
    cache_lookup: bool = False  # whether the prompt cache was asked (hit or miss)


Event = TextDelta | Finished


class Sink(Protocol):
    """Receives a submission's events on the decode thread; must not block."""

    def put(self, event: Event) -> None: ...

    def wait_taken(self, timeout_seconds: float) -> None:
        """Return once the consumer has taken what was put (or at the timeout)."""


@dataclass(frozen=True, kw_only=True)
class SchedulerLimits:
    max_active_sequences: int = 4
    max_queued_requests: int = 16
    max_batch_size: int = 4
    default_max_tokens: int = 512
    retry_after_seconds: int = 1
    gather_window_seconds: float = 0.02
    prompt_cache_bytes: int = 512 * 2**20  # 0 turns the prompt cache off


@dataclass(eq=False)
class Submission:
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    sink: Sink
    submitted_at: float = field(default_factory=time.perf_counter)
    cached_tokens: int = 0
    cache_lookup: bool = False
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop generating for this caller; its slot is free at the next decode step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class _Sequence:
    def __init__(self, sub: Submission, stream: Any) -> None:
        self.sub = sub
        self.stream = stream
        self.stops = StopMatcher(sub.params.stop)
        self.completion_tokens = 0
        self.sent_text = False
        self.done = False
        self.reason: FinishReason | None = None
        self.logprobs: list[TokenLogprob] = []  # not yet sent with a text delta
        # The end-of-sequence token that ended it: the engine never appends that one.
        self.eos_token: int | None = None


class _Group:
    """One onnxruntime-genai generator and the sequences it decodes together."""

    def __init__(
        self, generator: Any, seqs: list[_Sequence], keep: tuple[BatchKey, int] | None = None
    ) -> None:
        self.generator = generator
        self.seqs = seqs
        self.keep = keep  # (search options, max_length) when the prompt cache may keep it
        # The prompt's last logits row, kept with the generator for an exact hit later.
        self.logits: Logits | None = None
        self.logits_at = 0
        # An exact hit's first token, taken from kept logits: `first` is still to be sent,
        # `unfed` was sent but not yet run through the model (the next step does).
        self.first: int | None = None
        self.unfed: int | None = None

    @property
    def live(self) -> list[_Sequence]:
        return [s for s in self.seqs if not s.done]


class Scheduler:
    def __init__(
        self,
        model: LoadedModel,
        limits: SchedulerLimits,
        *,
        on_finish: Callable[[Submission, Finished], None] | None = None,
        arrivals: Callable[[], int] | None = None,
    ) -> None:
        self.model = model
        self.limits = limits
        self._on_finish = on_finish
        self._arrivals = arrivals
        self._pending: deque[Submission] = deque()
        self._groups: list[_Group] = []
        self._active = 0
        self.prompt_cache = PromptCache(limits.prompt_cache_bytes, model.kv_bytes_per_token)
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="edge-decode", daemon=True)
        self._thread.start()

    # --- caller side ---------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def active_sequences(self) -> int:
        return self._active

    @property
    def idle(self) -> bool:
        """Nothing queued or decoding, and every finished generator kept: a request's
        Finished event comes before its generator is kept."""
        return not self._pending and not self._groups

    def submit(self, prompt_ids: list[int], params: SamplingParams, sink: Sink) -> Submission:
        self.model.check_guidance(params)
        room = self.model.context_length - len(prompt_ids)
        if room < 1:
            raise ContextLengthExceeded(
                f"the prompt has {len(prompt_ids)} tokens; this model's context is "
                f"{self.model.context_length} tokens"
            )
        if params.max_tokens is not None and params.max_tokens > room:
            raise ContextLengthExceeded(
                f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({params.max_tokens}) "
                f"exceeds this model's context of {self.model.context_length} tokens"
            )
        max_tokens = params.max_tokens or min(self.limits.default_max_tokens, room)
        sub = Submission(prompt_ids=prompt_ids, params=params, max_tokens=max_tokens, sink=sink)
        with self._cond:
            if self._stopping:
                raise NotReady("the runtime is shutting down")
            if len(self._pending) >= self.limits.max_queued_requests:
                raise Overloaded(
                    f"{self._active} requests are generating and {len(self._pending)} are "
                    "waiting, the most this agent queues; retry shortly",
                    self.limits.retry_after_seconds,
                )
            self._pending.append(sub)
            self._cond.notify()
        return sub

    def stop(self, timeout_seconds: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout_seconds)
        self.prompt_cache.clear()  # a retired version's kept generators go with it

    def drain(self, timeout_seconds: float = 300.0) -> None:
        """Let every admitted and queued request finish, then stop."""
        deadline = time.monotonic() + timeout_seconds
        with self._cond:
            while (self._pending or self._active) and time.monotonic() < deadline:
                self._cond.wait(0.05)
        self.stop()

    # --- decode thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._pending and not self._groups:
                    self._cond.wait()
                if self._stopping:
                    break
                self._gather_locked()
                admitted = self._admit_locked()
            fresh = [sub for sub in admitted if not self._start_from_cache(sub)]
            for batch in _batches(fresh, self.limits.max_batch_size, self.model.context_length):
                self._start_group(batch)
            for group in list(self._groups):
                self._step(group)
        for group in self._groups:
            self._finish_all(group, FinishReason.CANCELLED, "the runtime stopped")
        for sub in self._pending:
            self._deliver(sub, Finished(FinishReason.CANCELLED, len(sub.prompt_ids), 0))

    def _gather_locked(self) -> None:
        """Idle, with requests still on their way in: wait briefly so they batch together.

        Only requests the server has already received count, so a lone request never
        waits; clients that start together share one batch instead of queueing behind
        the first one's prefill.
        """
        if self._groups or self._arrivals is None:
            return
        deadline = time.monotonic() + self.limits.gather_window_seconds
        while (
            self._arrivals() > 0
            and len(self._pending) < self.limits.max_active_sequences
            and time.monotonic() < deadline
        ):
            self._cond.wait(0.001)

    def _admit_locked(self) -> list[Submission]:
        admitted = []
        while self._pending and self._active < self.limits.max_active_sequences:
            sub = self._pending.popleft()
            if sub.cancelled:
                self._deliver(sub, Finished(FinishReason.CANCELLED, len(sub.prompt_ids), 0))
                continue
            admitted.append(sub)
            self._active += 1
        return admitted

    def _start_from_cache(self, sub: Submission) -> bool:
        """Start `sub` on a kept generator sharing its prefix; False: start it afresh."""
        key = cache_key(sub.params)
        if key is None or not self.prompt_cache.enabled:
            return False
        sub.cache_lookup = True
        # Only greedy decoding's first token can be taken from kept logits bit-identically;
        # logprobs are read from the engine's own step, a grammar masks the engine's row.
        params = sub.params
        exact_ok = params.greedy and params.logprobs is None and not params.guided
        hit = self.prompt_cache.take(
            sub.prompt_ids, key, len(sub.prompt_ids) + sub.max_tokens, exact_ok=exact_ok
        )
        if hit is None:
            return False
        generator = hit.entry.generator
        seq = _Sequence(sub, self.model.decoder_stream())
        group = _Group(generator, [seq], (key, hit.entry.max_length))
        try:
            generator.rewind_to(hit.reused)
            if hit.exact and hit.entry.logits is not None:
                group.logits, group.logits_at = hit.entry.logits, hit.entry.logits_at
                group.first = greedy_first_token(
                    group.logits, self.model.eos_token_ids, sub.params.ignore_eos
                )
            else:
                generator.append_tokens(np.asarray(sub.prompt_ids[hit.reused :], dtype=np.int32))
                group.logits, group.logits_at = logits_row(generator), len(sub.prompt_ids)
        except Exception:  # the kept generator is dropped; the request starts afresh
            log.exception("could not continue a cached prompt; computing it afresh")
            return False
        sub.cached_tokens = hit.reused
        self._groups.append(group)
        return True

    def _start_group(self, subs: list[Submission]) -> None:
        seqs = [_Sequence(sub, self.model.decoder_stream()) for sub in subs]
        width = max(len(s.prompt_ids) for s in subs)
        max_length = width + max(s.max_tokens for s in subs)
        key = cache_key(subs[0].params)
        keep = None
        if len(subs) == 1 and key is not None and self.prompt_cache.enabled:
            max_length = min(self.model.context_length, max_length + CACHE_HEADROOM_TOKENS)
            keep = (key, max_length)
        try:
            generator = self.model.new_generator(
                [s.prompt_ids for s in subs], subs[0].params, max_length
            )
        except Exception as exc:
            log.exception("could not start generation for %d request(s)", len(subs))
            self._finish_all(_Group(None, seqs), FinishReason.ERROR, str(exc))
            return
        group = _Group(generator, seqs, keep)
        if keep is not None:
            group.logits, group.logits_at = logits_row(generator), len(subs[0].prompt_ids)
        self._groups.append(group)

    def _end_group(self, group: _Group) -> None:
        """Drop a group whose sequences are all done, keeping its generator if it may be.
        The group leaves `_groups` last, so `idle` covers the keeping."""
        try:
            self._keep(group)
        finally:
            self._groups.remove(group)

    def _keep(self, group: _Group) -> None:
        if group.keep is None or group.seqs[0].reason not in (
            FinishReason.STOP,
            FinishReason.LENGTH,
        ):
            return
        key, max_length = group.keep
        if group.first is not None:  # ended before its first step: nothing to keep
            return
        tokens = np.asarray(group.generator.get_sequence(0), dtype=np.int32)
        # Every token the generator holds went through the model but a last sampled one:
        # an exact hit that ended on its kept-logits token holds the prompt alone, and the
        # engine ends a sequence on its end-of-sequence token without appending it.
        if group.unfed is None and group.seqs[0].eos_token is None:
            tokens = tokens[:-1]  # sampled, not yet fed: it has no KV cache
        nbytes = self.prompt_cache.entry_bytes(max_length)
        if group.logits is not None:
            nbytes += group.logits.nbytes
        entry = CachedGenerator(
            group.generator, key, max_length, tokens, nbytes, group.logits, group.logits_at
        )
        self.prompt_cache.put(entry)

    def _step(self, group: _Group) -> None:
        for seq in group.live:
            if seq.sub.cancelled:
                self._finish(seq, FinishReason.CANCELLED)
        if not group.live:
            self._end_group(group)
            return
        if group.first is not None:  # an exact hit: its first token needs no model step
            group.unfed, group.first = group.first, None
            self._advance(group.seqs[0], group.unfed)
            if not group.live:
                self._end_group(group)
            return
        try:
            if group.unfed is not None:
                # Runs the model on the first token; the sample below is the engine's own.
                group.generator.append_tokens(np.asarray([group.unfed], dtype=np.int32))
                group.unfed = None
            group.generator.generate_next_token()
            tokens = group.generator.get_next_tokens()
        except Exception as exc:
            log.exception("generation failed")
            self._finish_all(group, FinishReason.ERROR, str(exc))
            self._end_group(group)
            return
        if any(s.sub.params.logprobs is not None for s in group.live):
            self._note_logprobs(group, tokens)
        for seq, token in zip(group.seqs, tokens, strict=True):
            if not seq.done:
                self._advance(seq, int(token))
        if group.live and group.generator.is_done():
            self._finish_all(group, FinishReason.LENGTH)
        if not group.live:
            self._end_group(group)

    def _note_logprobs(self, group: _Group, tokens: Any) -> None:
        logits = np.asarray(group.generator.get_logits(), dtype=np.float32)
        logits = logits.reshape(len(group.seqs), -1)
        for row, (seq, token) in enumerate(zip(group.seqs, tokens, strict=True)):
            top = seq.sub.params.logprobs
            if not seq.done and top is not None:
                seq.logprobs.append(_token_logprob(logits[row], int(token), top))

    def _advance(self, seq: _Sequence, token: int) -> None:
        seq.completion_tokens += 1
        if token in self.model.eos_token_ids and not seq.sub.params.ignore_eos:
            seq.eos_token = token
            if seq.logprobs:
                seq.logprobs.pop()  # the end of the text is no token of it
            self._finish(seq, FinishReason.STOP)
            return
        text = seq.stops.feed(seq.stream.decode(token))
        if text:
            self._deliver(seq.sub, TextDelta(text, _taken(seq.logprobs)))
            if not seq.sent_text:
                seq.sent_text = True
                seq.sub.sink.wait_taken(FIRST_TEXT_HANDOFF_SECONDS)
        if seq.stops.stopped:
            self._finish(seq, FinishReason.STOP)
        elif seq.completion_tokens >= seq.sub.max_tokens:
            self._finish(seq, FinishReason.LENGTH)

    def _finish(self, seq: _Sequence, reason: FinishReason, error: str | None = None) -> None:
        if reason in (FinishReason.STOP, FinishReason.LENGTH):
            tail = seq.stops.flush()
            if tail or seq.logprobs:
                self._deliver(seq.sub, TextDelta(tail, _taken(seq.logprobs)))
        seq.done = True
        seq.reason = reason
        with self._cond:
            self._active -= 1
        sub = seq.sub
        event = Finished(
            reason,
            len(sub.prompt_ids),
            seq.completion_tokens,
            error,
            cached_tokens=sub.cached_tokens,
            cache_lookup=sub.cache_lookup,
        )
        self._deliver(seq.sub, event)

    def _finish_all(self, group: _Group, reason: FinishReason, error: str | None = None) -> None:
        for seq in group.live:
            self._finish(seq, reason, error)

    def _deliver(self, sub: Submission, event: Event) -> None:
        try:
            sub.sink.put(event)
        except Exception:  # a broken consumer must not stop everyone else's decoding
            log.exception("dropping an event for a consumer that failed")
        if isinstance(event, Finished) and self._on_finish is not None:
            self._on_finish(sub, event)


def _token_logprob(logits: Any, token: int, top: int) -> TokenLogprob:
    """Log-softmax over the vocabulary: the chosen token's value and the `top` best."""
    shifted = logits - logits.max()
    logprobs = shifted - np.log(np.exp(shifted).sum())
    best = np.argpartition(-logprobs, top)[:top] if top else np.array([], dtype=np.int64)
    best = best[np.argsort(-logprobs[best])]
    alternatives = tuple((int(i), float(logprobs[i])) for i in best)
    return TokenLogprob(token, float(logprobs[token]), alternatives)


def _taken(pending: list[TokenLogprob]) -> tuple[TokenLogprob, ...]:
    taken = tuple(pending)
    pending.clear()
    return taken


def _batches(subs: Sequence[Submission], max_batch: int, context: int) -> list[list[Submission]]:
    """Group admitted requests that may share a generator (same sampling, fits context)."""
    batches: list[list[Submission]] = []
    for sub in subs:
        key = sub.params.batch_key()
        for batch in batches:
            head = batch[0].params.batch_key()
            if key is None or head != key or len(batch) >= max_batch:
                continue
            width = max(len(sub.prompt_ids), *(len(b.prompt_ids) for b in batch))
            longest = max(sub.max_tokens, *(b.max_tokens for b in batch))
            if width + longest <= context:
                batch.append(sub)
                break
        else:
            batches.append([sub])
    return batches
