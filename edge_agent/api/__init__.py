"""The local OpenAI-compatible HTTP API."""

from edge_agent.api.app import create_app

__all__ = ["create_app"]
