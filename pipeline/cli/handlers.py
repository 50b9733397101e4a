"""How a command module's `(args, settings)` functions become argparse handlers."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from pipeline.settings import Settings

Command = Callable[[argparse.Namespace, Settings], int]
Handler = Callable[[argparse.Namespace], int]


def with_settings(settings_of: Callable[[argparse.Namespace], Settings]) -> Callable[[Command], Handler]:
    """A decorator giving each command the Settings of its arguments; the handler keeps the
    command's name (what a compose service runs is checked by it: tests/unit/test_compose.py)."""

    def bind(fn: Command) -> Handler:
        def handler(args: argparse.Namespace) -> int:
            return int(fn(args, settings_of(args)))

        handler.__name__ = handler.__qualname__ = fn.__name__
        return handler

    return bind
