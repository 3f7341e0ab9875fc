"""Ingest of what devices report: MQTT (shared subscriptions) into the hub database."""
