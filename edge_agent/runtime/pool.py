"""Several models on one agent: loaded on demand, unloaded when idle, kept within a budget.

Every installed model can be asked for by name. One that is not loaded loads while its
request waits; if it would not fit the memory budget, idle models that are not pinned
unload first, least recently used first; if that still is not enough, the request gets
503 with Retry-After. A model unloads once it has been idle for its keep-alive (the
config's, or the last request's `keep_alive`, as Ollama does). Pinned models (`serve
--model`) load at start and never unload. Each model has its own scheduler, and so its
own queue limits: one busy model cannot fill another's queue.

A LoRA adapter is served on its base (runtime.adapters): asking for it loads the base as
any model, then the adapter into it once. The base counts once in the budget; each
adapter adds its own file's bytes to its base's slot, and leaves with the base.

A model's size is its files on disk plus a measured overhead (see `estimate_bytes`).
A request holds a lease on its model from the lookup until its submission is queued, so
a model is never unloaded between the two; after that the scheduler's own counts say
whether it is busy.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.runtime.adapters import AdapterRef
from edge_agent.runtime.errors import (
    AdapterBaseUnavailable,
    AdapterDoesNotFit,
    ModelLoadError,
    ModelTooLarge,
    NotReady,
)
from edge_agent.runtime.memory import release_free_memory
from edge_agent.runtime.service import ModelService

log = logging.getLogger(__name__)

# Resident memory a loaded model takes beyond its files, measured with onnxruntime-genai
# 0.x on CPU (RSS after LoadedModel.load minus the folder's bytes): the tiny model +1 MiB
# once the runtime itself is up (+24 MiB for the very first load: the runtime's own
# libraries), the small one (198 MiB of files) +65 MiB. A fixed part and a share of
# the files cover both with room to spare.
OVERHEAD_BYTES = 16 * 2**20
OVERHEAD_SHARE = 0.25
# With no budget configured: this share of the machine's physical memory.
DEFAULT_BUDGET_SHARE = 0.6
# A model that failed to load is not tried again for this long (each try costs a load).
FAILED_RETRY_SECONDS = 30


class ModelNotInstalled(Exception):
    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.available = available


def estimate_bytes(folder: Path) -> int:
    """Memory a model will take once loaded: its files plus the measured overhead."""
    files = sum(p.stat().st_size for p in folder.resolve().rglob("*") if p.is_file())
    return files + math.ceil(files * OVERHEAD_SHARE) + OVERHEAD_BYTES


def default_budget_bytes() -> int:
    """A share of this machine's physical memory (the OS and other work keep the rest)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        total = 8 * 2**30  # no sysconf: assume a small box
    return int(total * DEFAULT_BUDGET_SHARE)


def parse_keep_alive(value: float | int | str | None) -> float | None:
    """Ollama's keep_alive: seconds, or a duration ("30s", "5m", "1h"); negative = never
    unload, 0 = unload once idle. None: the configured default."""
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    text = value.strip().lower()
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            number, scale = text[: -len(suffix)], units[suffix]
            break
    else:
        number, scale = text, 1.0
    try:
        return float(number) * scale
    except ValueError:
        raise ValueError(
            f"keep_alive '{value}' is not a duration: give seconds (300, -1 = never unload) "
            'or a number with s, m or h ("5m")'
        ) from None


@dataclass
class _Slot:
    """What the pool knows of one loaded model."""

    bytes: int
    pinned: bool
    keep_alive: float  # seconds idle before unloading; < 0: never
    last_used: float
    leases: int = 0
    adapter_bytes: int = 0  # the adapters loaded on this base, together

    @property
    def total_bytes(self) -> int:
        return self.bytes + self.adapter_bytes

    def busy(self, service: ModelService) -> bool:
        scheduler = service.scheduler
        active = scheduler is not None and (scheduler.queue_depth or scheduler.active_sequences)
        return self.leases > 0 or bool(active)


class ModelPool:
    def __init__(
        self,
        *,
        discover: Callable[[], dict[str, Path]],
        make_service: Callable[[str, Path], ModelService],
        discover_adapters: Callable[[], dict[str, AdapterRef]] = dict,
        budget_bytes: int = 0,
        keep_alive_seconds: float = 300.0,
        retry_after_seconds: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.discover = discover
        self.make_service = make_service
        self.discover_adapters = discover_adapters
        self.budget_bytes = budget_bytes or default_budget_bytes()
        self.keep_alive_seconds = keep_alive_seconds
        self.retry_after_seconds = retry_after_seconds
        self.clock = clock
        self.services: dict[str, ModelService] = {}  # loaded and ready, by name
        self._slots: dict[str, _Slot] = {}
        self._loading: dict[str, tuple[threading.Event, int]] = {}  # name -> (done, bytes)
        self._failed: dict[str, tuple[float, str]] = {}  # name -> (when, why)
        self._pinned: dict[str, ModelService] = {}
        # Loaded outside the pool and kept (embeddings encoders): name -> bytes.
        self._resident: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self.loads = 0
        self.unloads = 0

    # --- what there is ------------------------------------------------------------------

    def pin(self, service: ModelService) -> None:
        """Serve `service` for the pool's whole life (it loads on its own: serve's lifespan)."""
        with self._lock:
            self._pinned[service.name] = service
            self.services[service.name] = service
            self._slots[service.name] = _Slot(
                bytes=estimate_bytes(service.path), pinned=True, keep_alive=-1,
                last_used=self.clock(),
            )  # fmt: skip

    def known(self) -> dict[str, Path]:
        """Every model that can be served: the installed ones and the pinned ones."""
        found = dict(self.discover())
        found.update({name: service.path for name, service in self._pinned.items()})
        found.update({name: ref.folder for name, ref in self.discover_adapters().items()})
        return dict(sorted(found.items()))

    def adapter(self, name: str) -> AdapterRef | None:
        """The installed adapter called `name`, or None when it names a model."""
        return self.discover_adapters().get(name)

    def used_bytes(self) -> int:
        with self._lock:
            return self._used_locked()

    def _used_locked(self) -> int:
        loading = sum(size for _done, size in self._loading.values())
        resident = sum(self._resident.values())
        return sum(slot.total_bytes for slot in self._slots.values()) + loading + resident

    def reserve(self, name: str, folder: Path) -> None:
        """Count a model loaded outside the pool (an embeddings encoder, kept once loaded)
        in the budget: idle models unload to make room; NotReady (503) when none can."""
        size = estimate_bytes(folder)
        with self._lock:
            if name not in self._resident:
                self._make_room_locked(size, name)
                self._resident[name] = size

    def unreserve(self, name: str) -> None:
        """The model `reserve` counted did not load after all."""
        with self._lock:
            self._resident.pop(name, None)

    # --- serving ------------------------------------------------------------------------

    def acquire_loaded(self, name: str, keep_alive: float | None = None) -> ModelService | None:
        """The model when it is loaded (leased, as `acquire`), else None: never waits. An
        adapter counts as loaded once its base is and it is loaded on it."""
        ref = self.adapter(name)
        with self._lock:
            service = self._lease_locked(ref.base_name if ref else name, keep_alive)
        if service is None or ref is None:
            return service
        model = service.model
        if model is not None and model.adapters.is_current(ref):
            return service
        self.release(service)
        return None

    def _lease_locked(self, name: str, keep_alive: float | None) -> ModelService | None:
        service = self.services.get(name)
        if service is not None:
            slot = self._slots[name]
            slot.leases += 1
            slot.last_used = self.clock()
            if keep_alive is not None and not slot.pinned:
                slot.keep_alive = keep_alive
        return service

    def acquire(self, name: str, keep_alive: float | None = None) -> ModelService:
        """The model, loaded if need be (this thread waits); the caller must `release` it
        once its work is queued. Raises ModelNotInstalled, NotReady (503) or
        ModelLoadError. For an adapter: its base, with the adapter loaded on it."""
        ref = self.adapter(name)
        if ref is None:
            return self._acquire_model(name, keep_alive)
        if ref.base_name not in self.known():
            raise AdapterBaseUnavailable(
                f"adapter {name} needs its base model {ref.base}, which is not installed: "
                f"install {ref.base_name} {ref.base_version} first"
            )
        service = self._acquire_model(ref.base_name, keep_alive)
        try:
            self._attach(service, ref)
        except BaseException:
            self.release(service)
            raise
        return service

    def _attach(self, service: ModelService, ref: AdapterRef) -> None:
        """Load `ref` on its base `service` unless it is already there."""
        model = service.model
        if model is None:
            raise NotReady(f"model {service.name} is not loaded; retry shortly")
        release = service.release
        if release is not None and release[1] != ref.base_version:
            raise AdapterBaseUnavailable(
                f"adapter {ref.name} was made for {ref.base}, but {ref.base_name} "
                f"{release[1]} is active: install an adapter release made for it"
            )
        if model.adapters.is_current(ref):
            return
        size = ref.file_bytes()
        previous = model.adapters.loaded().get(ref.name, 0)  # its version loaded before
        with self._lock:
            self._make_room_locked(size, ref.name, keep=ref.base_name)
            slot = self._slots.get(service.name)
            if slot is not None:
                slot.adapter_bytes += size
        try:
            loaded = model.adapters.ensure(ref)
        except Exception as exc:
            with self._lock:
                if slot is not None:
                    slot.adapter_bytes -= size
            kind = AdapterDoesNotFit if isinstance(exc, AdapterDoesNotFit) else ModelLoadError
            raise kind(f"adapter {ref.name} does not load on {ref.base}: {exc}") from exc
        if slot is not None and (not loaded or previous):
            with self._lock:  # loaded meanwhile by another request, or replaced its version
                slot.adapter_bytes -= size if not loaded else previous
        if loaded and previous and service.scheduler is not None:
            # Kept prompts are keyed by the adapter's name: those of its replaced version
            # must not answer for the new one (a rare event: drop the base's kept prompts).
            service.scheduler.prompt_cache.clear()

    def _acquire_model(self, name: str, keep_alive: float | None) -> ModelService:
        while True:
            with self._lock:
                service = self._lease_locked(name, keep_alive)
                if service is not None:
                    return service
                pending = self._loading.get(name)
                if pending is None:
                    size, path = self._admit_locked(name)
                    done = threading.Event()
                    self._loading[name] = (done, size)
                    break
            pending[0].wait()  # another request loads it: then look again
        try:
            service = self._load(name, path)
        finally:
            with self._lock:
                del self._loading[name]
            done.set()
        with self._lock:
            self._failed.pop(name, None)
            self.services[name] = service
            self._slots[name] = _Slot(
                bytes=size,
                pinned=False,
                keep_alive=self.keep_alive_seconds if keep_alive is None else keep_alive,
                last_used=self.clock(),
                leases=1,
            )
            self.loads += 1
        return service

    def release(self, service: ModelService) -> None:
        with self._lock:
            slot = self._slots.get(service.name)
            if slot is not None and slot.leases > 0:
                slot.leases -= 1
                slot.last_used = self.clock()

    def _admit_locked(self, name: str) -> tuple[int, Path]:
        """Make room for `name`: its estimated bytes and folder; or why not."""
        known = self.known()
        if name not in known:
            raise ModelNotInstalled(name, list(known))
        failed = self._failed.get(name)
        if failed is not None and self.clock() - failed[0] < FAILED_RETRY_SECONDS:
            raise NotReady(f"model {name} failed to load: {failed[1]}", FAILED_RETRY_SECONDS)
        path = known[name]
        size = estimate_bytes(path)
        if size > self.budget_bytes:
            raise ModelTooLarge(
                f"model {name} needs about {size / 2**20:.0f} MiB, more than the whole "
                f"memory budget ({self.budget_bytes / 2**20:.0f} MiB): raise "
                "[runtime] memory_budget_mib or serve a smaller model"
            )
        self._make_room_locked(size, name)
        return size, path

    def _make_room_locked(self, size: int, name: str, keep: str | None = None) -> None:
        """Unload idle models (never pinned, busy or `keep`) until `size` more bytes fit."""
        idle = sorted(
            (slot.last_used, other)
            for other, slot in self._slots.items()
            if not slot.pinned and other != keep and not slot.busy(self.services[other])
        )
        while self._used_locked() + size > self.budget_bytes and idle:
            self._unload_locked(idle.pop(0)[1], "to make room for " + name)
        if self._used_locked() + size > self.budget_bytes:
            raise NotReady(
                f"model {name} does not fit the memory budget now: the loaded models "
                f"({', '.join(self._slots) or 'none'}) are busy or pinned; retry shortly",
                self.retry_after_seconds,
            )

    def _load(self, name: str, path: Path) -> ModelService:
        service = self.make_service(name, path)
        service.load()
        if service.ready:
            return service
        why = str(service.error)
        with self._lock:
            self._failed[name] = (self.clock(), why)
        raise NotReady(f"model {name} failed to load: {why}", FAILED_RETRY_SECONDS)

    def _unload_locked(self, name: str, why: str) -> None:
        service = self.services.pop(name)
        del self._slots[name]
        self.unloads += 1
        log.info("unloading model %s (%s)", name, why)
        service.stop()  # idle: nothing queued or running, no lease
        service.model = None
        service.scheduler = None
        release_free_memory()

    # --- keep-alive ---------------------------------------------------------------------

    def sweep(self) -> list[str]:
        """Unload models idle for longer than their keep-alive; returns their names."""
        now = self.clock()
        with self._lock:
            expired = [
                name
                for name, slot in self._slots.items()
                if not slot.pinned
                and slot.keep_alive >= 0
                and now - slot.last_used >= slot.keep_alive
                and not slot.busy(self.services[name])
            ]
            for name in expired:
                self._unload_locked(name, "idle past its keep-alive")
        return expired

    def start(self, interval_seconds: float = 1.0) -> None:
        def run() -> None:
            while not self._stop.wait(interval_seconds):
                self.sweep()

        self._sweeper = threading.Thread(target=run, name="model-keep-alive", daemon=True)
        self._sweeper.start()

    def stop(self) -> None:
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join(5)
        with self._lock:
            services = list(self.services.values())
        for service in services:
            service.stop()

    # --- live switches ------------------------------------------------------------------

    def swap_view(self) -> MutableMapping[str, ModelService]:
        """The mapping an ActiveWatcher switches versions in: only a loaded model switches,
        and a version loaded while its model was unloaded is dropped."""
        return _SwapView(self)

    def _swapped(self, name: str, fresh: ModelService) -> None:
        with self._lock:
            if name in self.services:
                self.services[name] = fresh
                self._slots[name].bytes = estimate_bytes(fresh.path)
                self._slots[name].adapter_bytes = 0  # adapters load again on the new version
                if name in self._pinned:
                    self._pinned[name] = fresh
                return
        log.info("dropping the new version of %s: the model was unloaded meanwhile", name)
        fresh.stop()

    # --- what is loaded -----------------------------------------------------------------

    def ps(self) -> list[dict[str, Any]]:
        now = self.clock()
        with self._lock:
            rows = []
            for name, slot in sorted(self._slots.items()):
                service = self.services[name]
                scheduler = service.scheduler
                rows.append(
                    {
                        "model": name,
                        "path": str(service.loaded_from or service.path),
                        "ready": service.ready,
                        "pinned": slot.pinned,
                        "memory_bytes": slot.bytes,
                        "adapters": service.model.adapters.loaded() if service.model else {},
                        "idle_seconds": round(now - slot.last_used, 3),
                        "keep_alive_seconds": None if slot.keep_alive < 0 else slot.keep_alive,
                        "expires_in_seconds": (
                            None
                            if slot.pinned or slot.keep_alive < 0
                            else round(max(0.0, slot.keep_alive - (now - slot.last_used)), 3)
                        ),
                        "queue_depth": scheduler.queue_depth if scheduler else 0,
                        "active_sequences": scheduler.active_sequences if scheduler else 0,
                    }
                )
            return rows


class _SwapView(MutableMapping[str, ModelService]):
    def __init__(self, pool: ModelPool) -> None:
        self.pool = pool

    def __getitem__(self, name: str) -> ModelService:
        return self.pool.services[name]

    def __setitem__(self, name: str, service: ModelService) -> None:
        self.pool._swapped(name, service)

    def __delitem__(self, name: str) -> None:
        raise TypeError("models leave the pool by unloading, not by a watcher")

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.pool.services))

    def __len__(self) -> int:
        return len(self.pool.services)
