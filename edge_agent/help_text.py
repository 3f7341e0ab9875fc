"""Help screens that read like a Unix tool's: `--verbose` rather than `--verbose <bool>`,
`--stop <str>` rather than `<list[str]>`, `enroll [OPTIONS] HUB_URL` rather than
`{hub_url}`, `update [OPTIONS] [MODEL]...`.

typer 0.29 prints a Python type after every option, flags included, and curly braces
around required arguments; these small overrides of its display methods, applied once
for every program of the project, restore the usual conventions.
"""

from __future__ import annotations

from typing import Any

import typer.core

_applied = False


def _option_type(self: typer.core.TyperOption, ctx: Any) -> str | None:
    if self.is_flag:
        return None  # a flag takes no value: nothing to show
    if self.metavar is not None:
        return self.metavar
    return _value_label(self, ctx)


def _argument_type(self: typer.core.TyperArgument, ctx: Any) -> str:
    return _value_label(self, ctx)


def _value_label(param: typer.core.TyperOption | typer.core.TyperArgument, ctx: Any) -> str:
    label = param.display_type(ctx)
    # <list[str]>: the option repeats (its help says so); each value is a str
    return label.replace("list[", "").replace("]", "") if label.startswith("<list[") else label


def _usage_name(self: typer.core.TyperArgument) -> str:
    if self.metavar is not None:
        return self.metavar  # already written as it should read, e.g. [MODEL]...
    name = (self.name or "").upper()
    if not self.required:
        name = f"[{name}]"
    return name + ("..." if self.nargs != 1 else "")


def apply() -> None:
    global _applied
    if _applied:
        return
    _applied = True
    typer.core.TyperOption.display_type_rich = _option_type  # type: ignore[method-assign]
    typer.core.TyperArgument.display_type_rich = _argument_type  # type: ignore[method-assign,assignment]
    typer.core.TyperArgument._usage_display_name = _usage_name  # type: ignore[method-assign]
