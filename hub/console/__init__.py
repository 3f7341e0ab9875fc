"""The hub console: server-rendered pages where operators run the fleet and its rollouts,
with accounts, roles, server-side sessions and CSRF protection (see app.py)."""
