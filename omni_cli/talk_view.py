"""The terminal view of `omni talk` (rich): a live line with the state (listening, hearing
you, thinking, speaking) and the turn in progress (what was heard, the answer as it is
written), and each finished turn printed above it with its first-audio latency and other
timings. It only renders the events of `omni_cli.talk.Conversation`.
"""

from __future__ import annotations

from typing import Self

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from omni_cli.events import ErrorEvent, Event, TextDelta, Transcript
from omni_cli.talk import HistoryTrimmed, StateChanged, Turn, TurnEnded, TurnStarted

STATES = {
    "listening": ("green", "listening"),
    "hearing": ("cyan", "hearing you"),
    "thinking": ("yellow", "thinking"),
    "speaking": ("magenta", "speaking"),
}
NO_TRANSCRIPT = "(end-to-end: no transcript needed)"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def timings_line(turn: Turn) -> Text:
    """'first audio 1.23 s · first token 0.80 s · asr 0.31 s · ...' for one turn."""
    m = turn.metrics
    parts = [("first audio", m.get("first_audio_latency_s")), ("first token", m.get("first_token_s"))]
    parts += [(k[:-2].replace("_", " "), v) for k, v in m.items()
              if k not in ("first_audio_latency_s", "first_token_s", "total_s", "audio_s", "rtf")]
    parts += [("total", m.get("total_s")), ("spoken", turn.spoken_s)]
    line = Text(" · ".join(f"{name} {_seconds(v)}" for name, v in parts), style="dim")
    if turn.interrupted:
        line.append("  interrupted", style="bold red")
    return line


class TalkView:
    """`with TalkView(console, mode) as view: view.show(event)` for each conversation event."""

    def __init__(self, console: Console, mode: str, push_to_talk: bool = False):
        self.console, self.mode, self.push_to_talk = console, mode, push_to_talk
        self.state = "listening"
        self.index: int | None = None
        self.heard: str | None = None
        self.text = ""
        self.error: str | None = None
        self.trim_said = False
        self.live = Live(self._live(), console=console, auto_refresh=False, transient=True)

    def __enter__(self) -> Self:
        self.live.start()
        if not self.console.is_terminal:
            self.console.print(Text(f"[{STATES[self.state][1]}]", style="dim"))
        return self

    def __exit__(self, *exc) -> None:
        self.live.stop()

    def show(self, e: Event) -> None:
        if isinstance(e, StateChanged):
            if not self.console.is_terminal and e.state != self.state:  # no live line: say it as a line
                self.console.print(Text(f"[{STATES.get(e.state, (None, e.state))[1]}]", style="dim"))
            self.state = e.state
        elif isinstance(e, TurnStarted):
            self.index, self.heard, self.text, self.error = e.index, None, "", None
        elif isinstance(e, Transcript):
            self.heard = e.text
        elif isinstance(e, TextDelta):
            self.text += e.text
        elif isinstance(e, ErrorEvent):
            self.error = e.message
        elif isinstance(e, HistoryTrimmed):
            if not self.trim_said:  # said once
                self.live.console.print(Text(f"(the conversation outgrew the model's context: its oldest turns are "
                                             f"forgotten from now on; {e.kept_turns} kept)", style="dim"))
                self.trim_said = True
            return
        elif isinstance(e, TurnEnded):
            self.live.console.print(self._finished(e.turn))
            self.index = None
        else:
            return  # nothing shown changed
        self.live.update(self._live(), refresh=True)

    def _live(self) -> Group:
        color, word = STATES.get(self.state, ("white", self.state))
        head = Text.assemble(("● ", color), (word, f"bold {color}"), (f"   {self.mode}", "dim"))
        if self.push_to_talk:
            head.append("   Enter: " + ("stop talking" if self.state == "hearing" else "talk"), style="dim")
        lines = [head]
        if self.index is not None:
            lines.append(self._you(self.heard))
            lines.append(Text.assemble(("omni  ", "bold"), self.text.strip()))
            if self.error:
                lines.append(Text(f"error: {self.error}", style="red"))
        return Group(*lines)

    def _you(self, heard: str | None) -> Text:
        if heard is None:
            return Text.assemble(("you   ", "bold"), (NO_TRANSCRIPT if self.mode == "e2e" else "...", "dim"))
        return Text.assemble(("you   ", "bold"), heard)

    def _finished(self, turn: Turn) -> Group:
        lines = [Text(f"── turn {turn.index} " + "─" * 30, style="dim"), self._you(turn.transcript)]
        if turn.error and not turn.text:
            lines.append(Text(f"error: {turn.error}", style="red"))
        else:
            lines.append(Text.assemble(("omni  ", "bold"), turn.text))
        if turn.metrics:
            lines.append(timings_line(turn))
        return Group(*lines)
