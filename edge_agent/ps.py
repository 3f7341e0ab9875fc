"""`edge-agent ps`: what the running agent has loaded, read from its GET /v1/ps."""

from __future__ import annotations

from typing import Any

import httpx

from edge_agent.config import ApiConfig


class AgentUnreachable(Exception):
    pass


def agent_url(api: ApiConfig) -> str:
    host = "127.0.0.1" if api.host in ("0.0.0.0", "", "::") else api.host  # noqa: S104
    return f"http://{host}:{api.port}" if ":" not in host else f"http://[{host}]:{api.port}"


def loaded_models(url: str, api_key: str | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        reply = httpx.get(f"{url}/v1/ps", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise AgentUnreachable(
            f"no agent answers at {url} ({exc}); is `edge-agent serve` running? "
            "give its address with --url"
        ) from None
    if reply.status_code == 401:
        raise AgentUnreachable(f"the agent at {url} refused the API key: check [api] api_keys")
    if reply.status_code != 200:
        raise AgentUnreachable(f"the agent at {url} answered {reply.status_code}: {reply.text}")
    body: dict[str, Any] = reply.json()
    return body


def format_table(body: dict[str, Any]) -> list[str]:
    lines = [f"{'MODEL':<24} {'MEMORY':>10} {'IDLE':>8} {'UNLOADS IN':>11}  STATE"]
    for row in body["data"]:
        expires = row["expires_in_seconds"]
        until = "pinned" if row["pinned"] else ("never" if expires is None else f"{expires:.0f}s")
        state = "busy" if row["queue_depth"] or row["active_sequences"] else "idle"
        if not row["ready"]:
            state = "loading"
        lines.append(
            f"{row['model']:<24} {row['memory_bytes'] / 2**20:>7.0f} MiB "
            f"{row['idle_seconds']:>7.0f}s {until:>11}  {state}"
        )
        for adapter, size in sorted(row.get("adapters", {}).items()):  # LoRA, on this base
            lines.append(f"  + {adapter:<20} {size / 2**20:>7.1f} MiB  adapter")
    used, budget = body["memory_used_bytes"], body["memory_budget_bytes"]
    lines.append(f"memory: {used / 2**20:.0f} MiB of a {budget / 2**20:.0f} MiB budget")
    return lines
