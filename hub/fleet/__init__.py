"""The fleet: devices, groups, enrollment, desired vs reported state."""
