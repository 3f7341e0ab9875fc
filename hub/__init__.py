"""The fleet hub: model registry, rollouts, ingest and console."""
