"""Anonymous usage telemetry on the hub: stored by model release and window, never by
device (`models`), and shown only as aggregates over at least k devices (`query`)."""
