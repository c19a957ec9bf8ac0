"""``aioelastic console``: serve the operator console (needs the ``console`` extra)."""

from __future__ import annotations

import argparse
from contextlib import AsyncExitStack

from .._config import load_settings
from .._errors import ConfigError
from .._urls import TracingURL, parse_tracing_url
from ._commands import registry_url

__all__ = ["add_console_parser", "parse_bind", "run_console_command"]


def add_console_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bind",
        metavar="HOST:PORT",
        help="where to listen (default: $AIOELASTIC_CONSOLE_BIND or 127.0.0.1:8080)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])


def parse_bind(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``."""
    host, sep, port = text.rpartition(":")
    if (
        not sep
        or not port.isascii()
        or not port.isdigit()
        or not 0 <= int(port) < 65536
        or not host
    ):
        raise ConfigError("bind", text, "use HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def _tracing(args: argparse.Namespace) -> TracingURL | None:
    settings = load_settings(tracing_url=getattr(args, "tracing", None))
    if settings.tracing_url is None:
        return None
    return parse_tracing_url(settings.tracing_url.get_secret_value())


async def run_console_command(args: argparse.Namespace) -> int:
    try:
        from ..console import Console, ConsoleSettings
        from ..console._server import check_tracing, open_console, serve_http
    except ImportError as exc:
        raise ConfigError(
            "console", exc.name, "install the console extra: pip install 'aioelastic[console]'"
        ) from None
    settings = ConsoleSettings(**({"bind": args.bind} if args.bind else {}))
    host, port = parse_bind(settings.bind)
    tracing = _tracing(args)
    if tracing is not None:
        check_tracing(tracing)
    console = Console(settings)
    async with AsyncExitStack() as stack:
        await open_console(stack, console, registry_url(args), tracing)
        await serve_http(console.app, console, host=host, port=port, log_level=args.log_level)
    return 0
