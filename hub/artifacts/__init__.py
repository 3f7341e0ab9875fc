"""HTTP server for release metadata, targets and chunks, with per-device tokens."""
