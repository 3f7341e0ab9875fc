"""Updates end to end: a real signed repository, the agent's store, the health check."""

from __future__ import annotations

import pytest

from edge_agent.runtime import LoadedModel, RuntimeSettings
from edge_agent.updates.errors import HealthCheckFailed, NotTrusted, Refused
from edge_agent.updates.fetchers import FolderFetcher
from edge_agent.updates.machine import Phase
from tests.updates.conftest import Fleet


def test_first_install_then_an_update_that_moves_only_what_changed(fleet: Fleet) -> None:
    first = fleet.update()
    assert (first.version, first.changed, first.reused_bytes) == ("1.0.0", True, 0)
    fleet.repo.publish(fleet.variant("v2", top_k=7), "tiny", "1.1.0")
    second = fleet.update()
    assert second.version == "1.1.0"
    assert 0 < second.fetched_bytes < 10_000  # only the new genai_config.json
    assert second.reused_bytes > 300_000
    store = fleet.store
    assert store.active("tiny").version == "1.1.0"  # type: ignore[union-attr]
    assert store.previous("tiny").version == "1.0.0"  # type: ignore[union-attr]
    assert str(store.floor("tiny")) == "1.1.0"
    LoadedModel.load("t", store.active("tiny").path, RuntimeSettings())  # type: ignore[union-attr]
    assert fleet.update().changed is False


def test_history_of_a_successful_update(fleet: Fleet) -> None:
    fleet.update()
    assert fleet.manager().state.load().history == [
        "idle-start->downloading",
        "downloading-downloaded->installing",
        "installing-installed->activating",
        "activating-activated->health_check",
        "health_check-healthy->idle",
    ]


def test_unhealthy_release_rolls_back_by_itself_and_is_refused_later(fleet: Fleet) -> None:
    fleet.update()
    broken = fleet.variant("broken")
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    fleet.repo.publish(broken, "tiny", "1.1.0")
    with pytest.raises(HealthCheckFailed, match=r"tiny 1\.1\.0 failed .*rolled back to 1\.0\.0"):
        fleet.update()
    record = fleet.manager().state.load()
    assert record.phase is Phase.IDLE
    assert record.history[-2:] == [
        "health_check-failed->rolling_back",
        "rolling_back-rolled_back->idle",
    ]
    assert fleet.store.active("tiny").version == "1.0.0"  # type: ignore[union-attr]
    assert fleet.store.versions("tiny") == ["1.0.0"]  # the broken one is gone
    assert str(fleet.store.floor("tiny")) == "1.0.0"
    with pytest.raises(Refused, match="failed its health check here before"):
        fleet.update()


def test_operator_rollback(fleet: Fleet) -> None:
    fleet.update()
    fleet.repo.publish(fleet.variant("v2", top_k=7), "tiny", "1.1.0")
    fleet.update()
    assert fleet.manager().rollback("tiny") == "1.0.0"
    assert fleet.store.active("tiny").version == "1.0.0"  # type: ignore[union-attr]


def test_an_older_release_is_refused_even_though_signed(fleet: Fleet) -> None:
    fleet.repo.publish(fleet.variant("v2", top_k=7), "tiny", "1.1.0")
    fleet.update()
    before = fleet.snapshot()
    with pytest.raises(Refused, match=r"older than"):
        fleet.update("1.0.0")
    assert fleet.snapshot() == before


def test_no_pinned_root_means_no_updates(fleet: Fleet) -> None:
    (fleet.device / "trust" / "root.json").unlink()
    with pytest.raises(NotTrusted, match=r"pin the fleet's root\.json first"):
        fleet.update()


class CutAfter(FolderFetcher):
    """A link that drops after `limit` chunk downloads; counts what it fetched."""

    def __init__(self, limit: int | None = None) -> None:
        super().__init__()
        self.limit = limit
        self.chunks: list[str] = []

    def _fetch(self, url: str):  # type: ignore[no-untyped-def]
        if "/chunks/" in url:
            if self.limit is not None and len(self.chunks) >= self.limit:
                raise ConnectionError("link down")
            self.chunks.append(url)
        return super()._fetch(url)


def test_interrupted_download_resumes_without_fetching_finished_chunks(fleet: Fleet) -> None:
    from edge_agent.updates.errors import DownloadFailed

    needed = len(fleet.repo.manifest("tiny", "1.0.0").unique_chunks())
    assert needed >= 2
    cut = CutAfter(limit=1)
    with pytest.raises(DownloadFailed, match="retry when the link is back"):
        fleet.update(fetcher=cut)
    assert fleet.store.active("tiny") is None
    retry = CutAfter()
    assert fleet.update(fetcher=retry).version == "1.0.0"
    assert len(retry.chunks) == needed - 1
    assert not set(retry.chunks) & set(cut.chunks)
