"""The prompt cache on the real tiny model: same output as without it, reuse where a
prefix repeats, no entry crossing models, settings or versions, a bounded budget."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.runtime import (
    ChatMessage,
    Finished,
    RuntimeSettings,
    SamplingParams,
    SchedulerLimits,
    TextDelta,
)
from edge_agent.runtime.engine import LoadedModel
from edge_agent.runtime.prompt_cache import (
    MIN_REUSED_TOKENS,
    CachedGenerator,
    greedy_first_token,
    logits_row,
)
from edge_agent.runtime.service import ModelService
from edge_agent.runtime.sinks import QueueSink
from edge_agent.runtime.swap import ActiveWatcher
from tests.conftest import make_service

GREEDY = SamplingParams(temperature=0.0, max_tokens=8)
SYSTEM = "You answer questions about the Python standard library, briefly and exactly. " * 3
DOCUMENT = "def parse(text):\n    return [line.split(',') for line in text.splitlines()]\n" * 6


@pytest.fixture(scope="module")
def cached(tiny_model_dir: Path) -> Iterator[ModelService]:
    service = make_service(tiny_model_dir)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def uncached(tiny_model_dir: Path) -> Iterator[ModelService]:
    service = make_service(tiny_model_dir, prompt_cache_bytes=0)
    yield service
    service.stop()


def run(
    service: ModelService, prompt_ids: list[int], params: SamplingParams
) -> tuple[str, Finished]:
    sink = QueueSink()
    service.submit(prompt_ids, params, sink)
    text = []
    for event in sink:
        if isinstance(event, TextDelta):
            text.append(event.text)
        else:
            return "".join(text), event
    raise AssertionError("no finish event")


def settled(service: ModelService) -> CachedGenerator | None:
    """The newest kept generator, once the decode thread has kept it."""
    _, scheduler = service.require()
    deadline = time.monotonic() + 10
    while not scheduler.idle and time.monotonic() < deadline:
        time.sleep(0.001)
    return scheduler.prompt_cache.newest()


def chat_ids(service: ModelService, messages: list[ChatMessage]) -> list[int]:
    model, _ = service.require()
    return model.encode(model.chat_prompt(messages))


def fresh_logits(service: ModelService, ids: list[int]) -> np.ndarray:
    model, _ = service.require()
    return logits_row(model.new_generator([ids], GREEDY, len(ids) + 1))


words = st.sampled_from(["alpha", "beta", "gamma", "import os", "print(x)", "42", "é", "\n"])
# (user message, max_tokens, how many times the same prompt is sent again)
turn = st.tuples(
    st.lists(words, min_size=1, max_size=12).map(" ".join), st.integers(1, 12), st.integers(0, 2)
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(system=st.booleans(), ignore_eos=st.booleans(), turns=st.lists(turn, min_size=1, max_size=6))
def test_answers_with_the_cache_equal_answers_without_it(
    cached: ModelService,
    uncached: ModelService,
    system: bool,
    ignore_eos: bool,
    turns: list[tuple[str, int, int]],
) -> None:
    history = [ChatMessage("system", SYSTEM)] if system else []
    for index, (user, max_tokens, again) in enumerate(turns):
        history.append(ChatMessage("user", user))
        ids = chat_ids(cached, history)
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=ignore_eos)
        want, want_done = run(uncached, ids, params)
        got, got_done = run(cached, ids, params)
        assert (got, got_done.completion_tokens) == (want, want_done.completion_tokens)
        assert got_done.reason == want_done.reason
        assert want_done.cached_tokens == 0
        if system and index > 0:  # the previous turn left a long shared prefix
            assert got_done.cached_tokens >= MIN_REUSED_TOKENS
        for _ in range(again):  # an exact hit: the first token from the kept logits
            repeated, repeated_done = run(cached, ids, params)
            assert (repeated, repeated_done.completion_tokens) == (got, got_done.completion_tokens)
            assert repeated_done.reason == want_done.reason
            if len(ids) >= MIN_REUSED_TOKENS:  # shorter prompts are not worth a cache slot
                assert repeated_done.cached_tokens == len(ids)
        # The tiny model's answer hangs mostly on the last token, so the kept generator's
        # tokens are checked too: the prompt exactly, then the answer (all but its last,
        # or all of it when it ended on end-of-sequence, which the engine never appends).
        kept = settled(cached)
        assert kept is not None
        assert kept.tokens.tolist()[: len(ids)] == ids
        answer = got_done.completion_tokens
        assert len(kept.tokens) - len(ids) in (answer - 1, answer)
        # ...and the logits row an exact hit would draw from: this prompt's, not a stale one.
        assert kept.logits is not None and kept.logits_at == len(ids)
        np.testing.assert_allclose(kept.logits, fresh_logits(cached, ids), rtol=0, atol=1e-2)
        history.append(ChatMessage("assistant", got))


def test_a_growing_chat_reuses_its_history(cached: ModelService) -> None:
    history = [ChatMessage("system", SYSTEM), ChatMessage("user", "first question")]
    run(cached, chat_ids(cached, history), GREEDY)
    history += [ChatMessage("assistant", "an answer"), ChatMessage("user", "second question")]
    ids = chat_ids(cached, history)
    _, second = run(cached, ids, GREEDY)
    system_ids = chat_ids(cached, history[:1])
    assert second.cache_lookup
    assert second.cached_tokens >= len(system_ids) - 3  # all but the generation prompt
    assert second.cached_tokens < len(ids)


def test_the_same_document_asked_several_questions(cached: ModelService) -> None:
    model, _ = cached.require()
    doc = model.encode(DOCUMENT)
    for question in ("What does parse return?", "Which separator?", "Is it lazy?"):
        ids = doc + model.encode(question)
        _, done = run(cached, ids, GREEDY)
    assert done.cached_tokens >= len(doc) - 1  # the document's last token may merge


def test_a_repeated_system_prompt_is_read_once(cached: ModelService) -> None:
    system = [ChatMessage("system", SYSTEM + " Unique: 7781.")]
    run(cached, chat_ids(cached, [*system, ChatMessage("user", "one user")]), GREEDY)
    ids = chat_ids(cached, [*system, ChatMessage("user", "another user")])
    _, done = run(cached, ids, GREEDY)
    assert done.cached_tokens >= len(chat_ids(cached, system)) - 3


def test_different_search_options_never_share_a_generator(cached: ModelService) -> None:
    model, _ = cached.require()
    ids = model.encode(DOCUMENT + " options")
    run(cached, ids, GREEDY)
    sampled = SamplingParams(temperature=0.7, max_tokens=4)
    _, done = run(cached, ids, sampled)
    assert done.cache_lookup and done.cached_tokens == 0
    seeded = SamplingParams(temperature=0.7, max_tokens=4, seed=3)
    _, done = run(cached, ids, seeded)
    assert not done.cache_lookup and done.cached_tokens == 0
    _, done = run(cached, ids, GREEDY)  # the greedy entry is still there
    assert done.cached_tokens == len(ids)


def test_the_same_prompt_again_needs_no_model_step_before_its_first_token(
    cached: ModelService, uncached: ModelService
) -> None:
    model, _ = cached.require()
    ids = model.encode(DOCUMENT + " exact")
    one = SamplingParams(temperature=0.0, max_tokens=1)
    first, _ = run(cached, ids, one)
    # The entry holds the prompt's KV cache and the logits row it ended with.
    kept = settled(cached)
    assert kept is not None and kept.logits is not None and kept.logits_at == len(ids)
    # A request that ends on its kept-logits token leaves the generator at the prompt:
    # the next one is an exact hit again, and so is a longer answer after it.
    for params in (one, one, GREEDY, GREEDY):
        got, done = run(cached, ids, params)
        want, _ = run(uncached, ids, params)
        assert got == want and done.cached_tokens == len(ids)
    assert got.startswith(first)


@pytest.mark.parametrize("ignore_eos", [False, True])
def test_the_first_token_from_kept_logits_is_the_engines_greedy_choice(
    cached: ModelService, ignore_eos: bool
) -> None:
    """Logits crafted so that an end-of-sequence id, then a tie, lead: the engine's own
    greedy search (fed them with set_logits) picks what greedy_first_token picks."""
    model, _ = cached.require()
    ids = model.encode(DOCUMENT + " crafted")
    eos = min(model.eos_token_ids)
    for leader in ([eos], [7, 9]):  # an end-of-sequence id first; a tie between two tokens
        generator = engine_generator(model, ids, ignore_eos)
        crafted = np.zeros(logits_row(generator).size, dtype=np.float32)
        crafted[leader] = 5.0
        crafted[11] = 4.0
        generator.set_logits(crafted.reshape(1, -1).copy())
        generator.generate_next_token()
        engine_pick = int(generator.get_next_tokens()[0])
        assert greedy_first_token(crafted, model.eos_token_ids, ignore_eos) == engine_pick


def engine_generator(model: LoadedModel, ids: list[int], ignore_eos: bool) -> Any:
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=ignore_eos)
    return model.new_generator([ids], params, len(ids) + 4)


def test_an_exact_hit_recomputes_the_last_token_when_the_engine_must_sample(
    cached: ModelService,
) -> None:
    model, _ = cached.require()
    ids = model.encode(DOCUMENT + " recompute")
    run(cached, ids, GREEDY)
    with_logprobs = SamplingParams(temperature=0.0, max_tokens=4, logprobs=2)
    _, done = run(cached, ids, with_logprobs)
    assert done.cached_tokens == len(ids) - 1
    sampled = SamplingParams(temperature=0.7, max_tokens=4)
    run(cached, ids, sampled)
    _, done = run(cached, ids, sampled)
    assert done.cached_tokens == len(ids) - 1


def test_a_seeded_sample_repeats_itself_with_the_cache(cached: ModelService) -> None:
    model, _ = cached.require()
    ids = model.encode(DOCUMENT + " seeded")
    seeded = SamplingParams(temperature=0.9, max_tokens=12, seed=11)
    first, _ = run(cached, ids, seeded)
    second, _ = run(cached, ids, seeded)
    assert first == second


def test_entries_never_cross_models(tiny_model_dir: Path) -> None:
    one, other = make_service(tiny_model_dir), make_service(tiny_model_dir)
    try:
        model, _ = one.require()
        ids = model.encode(DOCUMENT + " models")
        run(one, ids, GREEDY)
        _, again = run(one, ids, GREEDY)
        assert again.cached_tokens == len(ids)
        _, elsewhere = run(other, ids, GREEDY)
        assert elsewhere.cache_lookup and elsewhere.cached_tokens == 0
    finally:
        one.stop()
        other.stop()


def test_the_budget_evicts_the_least_recent(tiny_model_dir: Path) -> None:
    probe = make_service(tiny_model_dir)
    model, scheduler = probe.require()
    probe.stop()
    one_entry = scheduler.prompt_cache.entry_bytes(model.context_length)
    service = make_service(tiny_model_dir, prompt_cache_bytes=one_entry)
    try:
        first = model.encode(DOCUMENT + " first")
        second = model.encode("An unrelated prompt that shares nothing with the document.")
        run(service, first, GREEDY)
        run(service, second, GREEDY)
        _, scheduler = service.require()
        assert len(scheduler.prompt_cache) == 1
        assert scheduler.prompt_cache.nbytes <= one_entry
        _, done = run(service, first, GREEDY)
        assert done.cache_lookup and done.cached_tokens == 0  # evicted by the second
    finally:
        service.stop()


def test_concurrent_requests_with_a_hit_each_run_alone(
    tiny_model_dir: Path, uncached: ModelService
) -> None:
    service = make_service(tiny_model_dir, max_batch_size=4)
    try:
        model, _ = service.require()
        prompts = [model.encode(DOCUMENT + f" question {n}") for n in range(3)]
        run(service, prompts[0], GREEDY)
        alone = [run(uncached, ids, GREEDY)[0] for ids in prompts]
        results: list[tuple[str, Finished]] = []
        threads = [
            threading.Thread(target=lambda i=ids: results.append(run(service, i, GREEDY)))
            for ids in prompts
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(text for text, _ in results) == sorted(alone)
        assert max(done.cached_tokens for _, done in results) >= len(prompts[0]) - 8
    finally:
        service.stop()


def test_a_version_switch_empties_the_old_versions_cache(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    for version in ("v1", "v2"):
        shutil.copytree(tiny_model_dir, tmp_path / version)
    active = tmp_path / "active"
    active.symlink_to(tmp_path / "v1")
    services: dict[str, ModelService] = {}

    def build() -> ModelService:
        return ModelService("tiny", active, RuntimeSettings(), SchedulerLimits())

    services["tiny"] = build()
    services["tiny"].load()
    old = services["tiny"]
    model, old_scheduler = old.require()
    ids = model.encode(DOCUMENT + " versions")
    run(old, ids, GREEDY)
    assert len(old_scheduler.prompt_cache) == 1
    watcher = ActiveWatcher(services, "tiny", build, 3600)
    (tmp_path / "next").symlink_to(tmp_path / "v2")
    (tmp_path / "next").replace(active)
    assert watcher.poll()
    watcher.stop(30)
    assert len(old_scheduler.prompt_cache) == 0 and old_scheduler.prompt_cache.nbytes == 0
    _, done = run(services["tiny"], ids, GREEDY)
    assert done.cache_lookup and done.cached_tokens == 0
    services["tiny"].stop()


def test_a_prompt_that_extends_the_kept_one_is_read_to_its_end(
    cached: ModelService, uncached: ModelService
) -> None:
    """The kept generator holds exactly the previous prompt (a one-token answer is never
    fed back): a longer prompt shares all of it, yet its own tokens must still be read,
    not answered from the previous prompt's kept logits."""
    model, _ = cached.require()
    ids = model.encode(DOCUMENT + " extended")
    run(cached, ids, SamplingParams(temperature=0.0, max_tokens=1))
    longer = ids + model.encode(" and a follow-up question about it")
    got, done = run(cached, longer, GREEDY)
    want, _ = run(uncached, longer, GREEDY)
    assert got == want and done.cached_tokens == len(ids)
    kept = settled(cached)
    assert kept is not None and kept.tokens.tolist()[: len(longer)] == longer


CHOICE = 'start: "alpha beta" | "gamma delta gamma" | "print(x)"'


def test_a_guided_request_continues_a_generator_built_with_its_grammar(
    cached: ModelService, uncached: ModelService
) -> None:
    """The grammar restarts on rewind: a kept guided generator answers a new prompt (and
    the same one again) exactly as a fresh one; another grammar never shares it."""
    model, _ = cached.require()
    doc = model.encode(DOCUMENT + " guided")
    guided = SamplingParams(temperature=0.0, max_tokens=12, lark_grammar=CHOICE)
    for question in (" first?", " second?", " second?"):
        ids = doc + model.encode(question)
        got, done = run(cached, ids, guided)
        want, _ = run(uncached, ids, guided)
        assert got == want and got in ("alpha beta", "gamma delta gamma", "print(x)")
    assert done.cached_tokens == len(ids) - 1  # the last token is recomputed: masked logits
    schema = SamplingParams(temperature=0.0, max_tokens=12, json_schema='{"type": "integer"}')
    _, other = run(cached, ids, schema)
    assert other.cache_lookup and other.cached_tokens == 0


def test_a_chats_next_turn_reuses_the_answer_it_sends_back(
    cached: ModelService, uncached: ModelService
) -> None:
    """A kept generator holds the prompt and the answer it generated, all but the last
    sampled token (never fed to the model): a next turn that sends the answer back as the
    same tokens reuses all of that and reads only the rest."""
    model, _ = cached.require()
    ids = chat_ids(cached, [ChatMessage("system", SYSTEM), ChatMessage("user", "a question")])
    answer_params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    run(cached, ids, answer_params)
    kept = settled(cached)
    assert kept is not None
    held = kept.tokens.tolist()
    assert held[: len(ids)] == ids and len(held) == len(ids) + 8 - 1
    following = held + model.encode("the next question")
    got, done = run(cached, following, answer_params)
    want, _ = run(uncached, following, answer_params)
    assert got == want and done.cached_tokens == len(held)
