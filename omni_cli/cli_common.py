"""What the `omni` command modules share: the --debug flag and `user_errors`, the boundary
that turns expected failures into one red line on stderr and an exit code."""

from __future__ import annotations

import contextlib
import os

import typer

from omni_cli import render as ui
from omni_cli.errors import OmniError, OutputError

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}

DEBUG = bool(os.environ.get("OMNI_DEBUG"))  # `cli.main` sets it for --debug: tracebacks instead of one line


@contextlib.contextmanager
def user_errors():
    """Turn expected failures into one line on stderr and an exit code."""
    try:
        yield
    except OmniError as exc:
        if DEBUG:
            raise
        ui.error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except OSError as exc:  # the system refused a read or write (no space, no permission, ...)
        if DEBUG:
            raise
        from omni_cli.audio import shown

        where = f"{shown(exc.filename)}: " if exc.filename else ""
        ui.error(f"{where}{exc.strerror or exc}")
        raise typer.Exit(OutputError.exit_code) from None
    except Exception as exc:  # noqa: BLE001 - the CLI boundary: no traceback for users
        if DEBUG:
            raise
        ui.error(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)")
        raise typer.Exit(70) from None
