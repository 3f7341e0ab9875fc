"""Signed updates: the TUF client, fetchers, and the update state machine."""
