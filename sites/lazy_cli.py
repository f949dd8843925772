"""Typer commands imported only when they run, so ``--help`` stays fast.

A command listed with :func:`lazy_group` is a ``module:function`` path and a
one-line help. The group's help lists it from that line alone; its module
(and whatever that module imports: httpx, pandas, ...) is imported when the
command is invoked or its own ``--help`` is asked for. A test checks that
each short help matches the first line of the real command's docstring.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import typer
from typer.core import TyperGroup


@dataclass(frozen=True)
class LazyCommand:
    """A command defined in ``module`` as function ``attribute``."""

    module: str
    attribute: str
    short_help: str

    def load(self, name: str) -> typer.core.TyperCommand:
        """Import the module and build the click command of its function."""
        function = getattr(importlib.import_module(self.module), self.attribute)
        single = typer.Typer(add_completion=False)
        single.command(name)(function)
        return typer.main.get_command(single)


class LazyGroup(TyperGroup):
    """A Typer group that imports its :attr:`lazy` commands on first use."""

    lazy: dict[str, LazyCommand] = {}

    def list_commands(self, ctx: typer.Context) -> list[str]:
        names = super().list_commands(ctx)
        return names + [name for name in self.lazy if name not in names]

    def get_command(self, ctx: typer.Context, cmd_name: str) -> typer.core.TyperCommand | None:
        """The command; a not yet imported lazy one as a stub carrying its short help.

        Only help listings see the stub: :meth:`resolve_command`, which every
        invocation goes through, imports the real command first.
        """
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in self.lazy:
            return typer.core.TyperCommand(cmd_name, help=self.lazy[cmd_name].short_help)
        return command

    def resolve_command(self, ctx: typer.Context, args: list[str]):  # noqa: ANN201 (click's)
        if args and args[0] in self.lazy and args[0] not in self.commands:
            self.commands[args[0]] = self.lazy[args[0]].load(args[0])
        return super().resolve_command(ctx, args)


def lazy_group(commands: dict[str, LazyCommand]) -> type[LazyGroup]:
    """A :class:`LazyGroup` class for ``typer.Typer(cls=...)`` with these commands."""
    return type("LazyCommands", (LazyGroup,), {"lazy": dict(commands)})
