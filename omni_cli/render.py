"""Terminal rendering with rich: what the CLI shows a person (on stderr) while data goes to stdout.

Text that comes from users or models (paths, transcripts, answers, error messages naming a
path) is never read as rich markup: `error` and `note` escape their message, and tables put
such text in cells as plain `Text`."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

err = Console(stderr=True, highlight=False)


_stdout_closed = False


def out(text: str) -> None:
    """Data to stdout, unstyled, flushed (so streamed text appears as it is written). Where the
    reader has gone (`omni respond q.wav | head -1`), the rest of the data is dropped and the
    command goes on to finish what it writes to files (the spoken answer, the results)."""
    global _stdout_closed
    if _stdout_closed:
        return
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_closed = True
        import os

        # stdout now writes nowhere, so that nothing (not even the flush at exit) fails on it again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def error(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)


def failed(message: str, console: Console | None = None) -> None:
    """One failed item of a batch, `failed: MESSAGE`, the message as plain text."""
    (console or err).print(Text.assemble(("failed: ", "red"), message), soft_wrap=True)


def note(message: str) -> None:
    err.print(f"[dim]{escape(message)}[/]", soft_wrap=True)


def progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def metrics_table(metrics: dict, title: str = "timings") -> Table:
    table = Table(title=title, title_justify="left", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, _fmt(value))
    return table


def models_table(rows: Iterable[dict]) -> Table:
    table = Table(show_header=True, header_style="bold")
    table.add_column("name", no_wrap=True)
    for col in ("role", "size", "source", "license", "status"):
        table.add_column(col, overflow="fold")
    for r in rows:
        status = r["status"]
        style = "green" if status in ("installed", "cached") else ("red" if status == "missing" else "yellow")
        table.add_row(r["name"], r["role"], r["size"], r["source"], r["license"], f"[{style}]{status}[/]")
    return table


TABLE_TEXT_CHARS = 300  # a transcript's share of the summary table (the whole text goes to stdout or --out)


def shortened(text: str, limit: int) -> str:
    """`text`, or its first words up to `limit` characters and an ellipsis."""
    if len(text) <= limit:
        return text
    return (text[:limit].rsplit(" ", 1)[0] or text[:limit]) + " …"


def transcribe_table(results, corpus_wer: float | None) -> Table:
    table = Table(show_header=True, header_style="bold", title="transcription", title_justify="left")
    table.add_column("file", overflow="fold")
    table.add_column("audio s", justify="right")
    table.add_column("WER", justify="right")
    table.add_column("result", overflow="fold")
    for r in results:
        path = Text(r.to_json()["path"])
        if r.error:
            table.add_row(path, "-", "-", Text(f"failed: {r.error}", style="red"))
        else:
            wer = "-" if r.wer is None else f"{100 * r.wer:.1f}%"
            table.add_row(path, f"{r.duration_s:.1f}", wer, Text(shortened(r.text or "", TABLE_TEXT_CHARS)))
    if corpus_wer is not None:
        table.add_section()
        table.add_row("[bold]corpus[/]", "", f"[bold]{100 * corpus_wer:.1f}%[/]", "")
    return table


def compare_table(metrics_by_mode: dict[str, dict]) -> Table:
    """Metrics of several pipelines on the same input, side by side."""
    modes = list(metrics_by_mode)
    table = Table(title="side by side (s)", title_justify="left", header_style="bold")
    table.add_column("metric")
    for m in modes:
        table.add_column(m, justify="right")
    keys = list(dict.fromkeys(k for m in modes for k in metrics_by_mode[m]))
    for k in keys:
        table.add_row(k, *(_fmt(metrics_by_mode[m].get(k)) for m in modes))
    return table


def data_table(rows: list[dict]) -> Table:
    table = Table(header_style="bold")
    table.add_column("name", no_wrap=True)
    for col in ("kind", "items", "license", "package"):
        table.add_column(col, overflow="fold")
    table.add_column("status")
    for r in rows:
        status = "[green]cached[/]" if r["cached"] else "[yellow]not fetched[/]"
        table.add_row(r["name"], r["kind"], _fmt(r["items"]), r["license"], r["package"], status)
    return table


def eval_table(header: list[str], rows: list[list[str]]) -> Table:
    """The side-by-side table of `omni eval` (see `omni_cli.evaluate.table_rows`)."""
    table = Table(title="omni eval", title_justify="left", header_style="bold")
    table.add_column(header[0])
    for name in header[1:]:
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(*r)
    return table
