"""A model being served: loaded in the background so the agent is live at once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from edge_agent.runtime.engine import LoadedModel, RuntimeSettings
from edge_agent.runtime.errors import NotReady
from edge_agent.runtime.memory import release_free_memory
from edge_agent.runtime.sampling import SamplingParams
from edge_agent.runtime.scheduler import Finished, Scheduler, SchedulerLimits, Sink, Submission
from edge_agent.store.store import release_of

log = logging.getLogger(__name__)


class ModelService:
    def __init__(
        self,
        name: str,
        path: Path,
        settings: RuntimeSettings,
        limits: SchedulerLimits,
        *,
        on_finish: Callable[[Submission, Finished], None] | None = None,
        on_loaded: Callable[[ModelService], None] | None = None,
        on_load_failed: Callable[[ModelService], None] | None = None,
    ) -> None:
        self.name = name
        self.path = path
        self.settings = settings
        self.limits = limits
        self._on_finish = on_finish
        self._on_loaded = on_loaded
        self._on_load_failed = on_load_failed
        self.arrivals: Callable[[], int] | None = None  # set by a server that counts them
        self.model: LoadedModel | None = None
        self.loaded_from: Path | None = None  # the folder behind `path` when it loaded
        self.scheduler: Scheduler | None = None
        self.error: Exception | None = None
        self._loaded = threading.Event()

    def load(self) -> None:
        """Load in this thread; afterwards `ready` or `error` tells how it went. Once: an
        agent that loaded before accepting (a launcher hand-over) skips its lifespan's load."""
        if self._loaded.is_set():
            return
        try:
            self.loaded_from = self.path.resolve()
            self.model = LoadedModel.load(self.name, self.loaded_from, self.settings)
            self.scheduler = Scheduler(
                self.model, self.limits, on_finish=self._on_finish, arrivals=self._arrivals
            )
            release_free_memory()  # the loader's temporary buffers
        except Exception as exc:
            self.error = exc
            log.error("model %s failed to load: %s", self.name, exc)
            if self._on_load_failed is not None:
                self._on_load_failed(self)
        else:
            if self._on_loaded is not None:
                self._on_loaded(self)
        finally:
            self._loaded.set()

    @property
    def release(self) -> tuple[str, str] | None:
        """(model, version) when the folder is an installed release, else None."""
        return release_of(self.loaded_from or self.path.resolve())

    def _arrivals(self) -> int:
        return self.arrivals() if self.arrivals is not None else 0

    def load_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.load, name=f"load-{self.name}", daemon=True)
        thread.start()
        return thread

    @property
    def ready(self) -> bool:
        return self.scheduler is not None

    def wait_loaded(self, timeout_seconds: float | None = None) -> bool:
        return self._loaded.wait(timeout_seconds)

    def require(self) -> tuple[LoadedModel, Scheduler]:
        if self.model is not None and self.scheduler is not None:
            return self.model, self.scheduler
        if self.error is not None:
            raise NotReady(f"model {self.name} failed to load: {self.error}", 30)
        raise NotReady(f"model {self.name} is still loading; retry shortly")

    def submit(self, prompt_ids: list[int], params: SamplingParams, sink: Sink) -> Submission:
        return self.require()[1].submit(prompt_ids, params, sink)

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()

    def drain(self) -> None:
        if self.scheduler is not None:
            self.scheduler.drain()
