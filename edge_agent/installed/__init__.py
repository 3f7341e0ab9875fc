"""The agent as an installed system service: systemd unit, readiness and watchdog
notifications, A/B slots with a launcher that falls back, and the doctor's checks."""
