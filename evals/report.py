"""Shared output of the benchmark commands: results as JSON on stdout, and optionally a file."""

from __future__ import annotations

import json
from pathlib import Path


def emit(results: dict, path: Path | None) -> None:
    text = json.dumps(results, indent=2)
    print(text)
    if path is not None:
        path.write_text(text + "\n")
