"""`edge-hub user ...`: console accounts (add, passwd, role, disable, enable, list).
Registered on the hub's app in hub/cli.py, whose config and database it uses (imported when a
command runs: hub/cli.py imports this module)."""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer

from hub.rollouts.auth import Role

app = typer.Typer(help="Console accounts: roles viewer, operator, approver, admin.")

NameArgument = Annotated[str, typer.Argument(help="the user's login name")]
RoleOption = Annotated[Role, typer.Option("--role", help="what the user may do")]


def _fail(message: str, code: int = 1) -> NoReturn:
    from hub import cli as hub_cli

    hub_cli.fail(message, code)


def _ask_password(confirm: bool) -> str | None:
    if not confirm:
        return None
    return str(typer.prompt("password", hide_input=True, confirmation_prompt=True))


@app.command("add")
def add(
    name: NameArgument,
    role: RoleOption = Role.VIEWER,
    password: Annotated[
        bool, typer.Option("--password", help="type a password instead of a one-time one")
    ] = False,
) -> None:
    """Create a user; prints a one-time password (changed at the first login) unless
    --password asks for one."""
    from hub import cli as hub_cli
    from hub.console import accounts

    chosen = _ask_password(password)
    with hub_cli._database() as engine:
        try:
            made = accounts.add_user(engine, name, role, chosen)
        except accounts.AccountError as exc:
            _fail(str(exc))
    typer.echo(f"user {name} ({role}) created", err=True)
    if chosen is None:
        typer.echo("one-time password below (shown once, changed at the first login)", err=True)
        typer.echo(made)


@app.command("passwd")
def passwd(
    name: NameArgument,
    password: Annotated[
        bool, typer.Option("--password", help="type a password instead of a one-time one")
    ] = False,
) -> None:
    """Reset a password (unlocks a locked account, ends its sessions)."""
    from hub import cli as hub_cli
    from hub.console import accounts

    chosen = _ask_password(password)
    with hub_cli._database() as engine:
        try:
            made = accounts.set_password(engine, name, chosen)
        except accounts.AccountError as exc:
            _fail(str(exc))
    typer.echo(f"password of {name} reset; its sessions ended", err=True)
    if chosen is None:
        typer.echo("one-time password below (shown once, changed at the first login)", err=True)
        typer.echo(made)


@app.command("role")
def role(
    name: NameArgument, new_role: Annotated[Role, typer.Argument(help="the new role")]
) -> None:
    """Change a user's role (its sessions end, so the new role counts at once)."""
    from hub import cli as hub_cli
    from hub.console import accounts

    with hub_cli._database() as engine:
        try:
            accounts.set_role(engine, name, new_role)
        except accounts.AccountError as exc:
            _fail(str(exc))
    typer.echo(f"{name} is now {new_role}")


@app.command("disable")
def disable(name: NameArgument) -> None:
    """Disable a user: no login, its sessions end at once."""
    _set_disabled(name, True)
    typer.echo(f"{name} is disabled; its sessions ended")


@app.command("enable")
def enable(name: NameArgument) -> None:
    """Enable a disabled user again."""
    _set_disabled(name, False)
    typer.echo(f"{name} is enabled")


def _set_disabled(name: str, disabled: bool) -> None:
    from hub import cli as hub_cli
    from hub.console import accounts

    with hub_cli._database() as engine:
        try:
            accounts.set_disabled(engine, name, disabled)
        except accounts.AccountError as exc:
            _fail(str(exc))


@app.command("list")
def list_users() -> None:
    """The users, their roles and whether they are disabled or locked."""
    from hub import cli as hub_cli
    from hub.console import accounts

    with hub_cli._database() as engine:
        users = accounts.list_users(engine)
    if not users:
        typer.echo("no users: `edge-hub serve` creates the first admin", err=True)
    for user in users:
        flags = [f for f, on in (("disabled", user.disabled), ("locked", user.locked_until)) if on]
        typer.echo(f"{user.name}\t{user.role}\t{' '.join(flags)}".rstrip())
