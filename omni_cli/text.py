"""Cutting streamed answer text into speakable pieces, and cleaning it for a voice.

`SentenceChunker` receives text deltas as the LLM writes them and hands out a piece as
soon as a sentence ends (. ! ? or a line break), or a clause ends (, ; :) once the piece
is long enough to sound natural. A boundary is only confirmed when the whitespace after
the mark arrives, so "3.5" or "e.g." never split. Nothing here knows about models.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc e.g i.e approx no fig mt ft lt col gen sgt inc ltd co u.s".split()
)
_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*\s|\n")
_CLAUSE_END = re.compile(r"[,;:–—]\s")


@dataclass(frozen=True)
class ChunkerOptions:
    first_clause_chars: int = 24  # the first piece may end at a clause once this long (early audio)
    clause_chars: int = 60  # later pieces end at a clause only once this long
    max_chars: int = 220  # a piece with no boundary is cut at a space beyond this length
    # the first piece may end after this many words, at a space (0: at a clause or sentence).
    # evals/chunk_sweep.py (30 spoken questions): 0 / 6 / 4 / 2 words gave first audio 0.96 /
    # 0.80 / 0.69 / 0.57 s (median) at corpus ASR-WER 3.7 / 4.5 / 3.8 / 4.2 %: no measurable cost.
    first_words: int = 2


_ENDS_SENTENCE = re.compile(r"[.!?\u2026]+[\"')\]]*$")


def ends_sentence(text: str) -> bool:
    """`text` (an answer as it streams) ends with a complete sentence: a sentence mark, not
    an abbreviation, an initial, a list marker or a number that may go on ("3." of "3.5")."""
    stripped = text.rstrip()
    if not _ENDS_SENTENCE.search(stripped) or re.search(r"\d\.$", stripped):
        return False
    return SentenceChunker._is_real_sentence_end(stripped)


class SentenceChunker:
    def __init__(self, options: ChunkerOptions = ChunkerOptions()):
        self.options = options
        self.buffer = ""
        self.pieces_out = 0

    @staticmethod
    def _is_real_sentence_end(before: str) -> bool:
        """`before` ends with a sentence mark: False for 'Dr.', 'e.g.', initials and '1.' list markers."""
        mark = before.rstrip("\"')]")
        if not mark.endswith("."):
            return True
        word = re.search(r"(\S+)$", mark.rstrip("."))
        if word is None:
            return True
        token = word.group(1).lower().strip("(\"'")
        if token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha()):
            return False
        if token.isdigit() and len(mark.split()) <= 1:
            return False  # "1." at the start of a list item
        return True

    def _cut(self) -> int | None:
        text = self.buffer
        for m in _SENTENCE_END.finditer(text):
            end = m.end()
            if m.group(0) == "\n" or self._is_real_sentence_end(text[: m.start() + len(m.group(0).rstrip())]):
                if re.search(r"\w", text[:end]):
                    return end
        limit = self.options.first_clause_chars if self.pieces_out == 0 else self.options.clause_chars
        if self.pieces_out == 0 and self.options.first_words:
            words = [m.end() for m in re.finditer(r"\S+\s+", text)]  # words already followed by a space
            if len(words) >= self.options.first_words:
                early = words[self.options.first_words - 1]
                clause = next((m.end() for m in _CLAUSE_END.finditer(text) if m.end() >= limit), None)
                return min(early, clause) if clause is not None else early
        for m in _CLAUSE_END.finditer(text):
            if m.end() >= limit:
                return m.end()
        if len(text) > self.options.max_chars:
            space = text.rfind(" ", 0, self.options.max_chars)
            return space + 1 if space > 0 else self.options.max_chars
        return None

    def feed(self, delta: str) -> Iterator[str]:
        """Add text; yield every piece that is now complete."""
        self.buffer += delta
        while (cut := self._cut()) is not None:
            piece, self.buffer = self.buffer[:cut], self.buffer[cut:]
            if clean_for_speech(piece):
                self.pieces_out += 1
                yield piece.strip()

    def flush(self) -> Iterator[str]:
        """Yield what is left at the end of the answer."""
        piece, self.buffer = self.buffer, ""
        if clean_for_speech(piece):
            self.pieces_out += 1
            yield piece.strip()


def clean_for_speech(text: str) -> str:
    """Text as a voice should read it: no markdown, list markers, URLs or emoji; '' if nothing speakable."""
    text = re.sub(r"https?://\S+", " ", text)
    text = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s+", " ", text, flags=re.MULTILINE)
    text = strip_marks(text)
    text = "".join(ch for ch in text if ch.isascii() or ch.isalpha() or ch in "’‘“”–—…")
    text = " ".join(text.split())
    return text if re.search(r"[A-Za-z0-9]", text) else ""


_MARKS = frozenset("*_`#>|~[]{}")  # what `clean_for_speech` takes out anywhere
_MARK = re.compile("[" + re.escape("".join(sorted(_MARKS))) + "]")


def strip_marks(text: str) -> str:
    """`text` with each markdown mark (`_MARKS`) a space: a voice does not say them."""
    return _MARK.sub(" ", text)


def unmarked(text: str) -> str:
    """`text` without its markdown marks (`_MARKS`), nothing in their place (":**" -> ":")."""
    return _MARK.sub("", text)


_BULLETS = frozenset("-•")


class SpokenTokens(Generic[T]):
    """Which of an answer's tokens a voice says, decided as they stream, by the rules of
    `clean_for_speech`: markdown marks, and a list item's bullet or number at the start of a
    line (followed by whitespace), are left out; whitespace stays (a word boundary).
    `push(text, item)` takes a token's text (its delta) and anything to hand back with it, and
    returns the items now known to be said, in order; a possible list marker waits for the token after it ("1" "." " Wash" is a
    list item, "1" "." "5" is a number), `flush` gives what still waits."""

    def __init__(self) -> None:
        self.line_start = True
        self.held: list[T] = []  # a possible list marker at a line's start
        self.marker = ""  # its text so far

    def push(self, text: str, item: T) -> list[T]:
        stripped = text.strip()
        if self.held:
            if self.marker[-1].isdigit() and (stripped.isdigit() or stripped in (".", ")")) and not text[0].isspace():
                self.held.append(item)
                self.marker += stripped
                return []
            held, self.held, marker, self.marker = self.held, [], self.marker, ""
            if marker[-1] in ".)-•" and (not text or text[0].isspace()):  # a list marker: not said
                return self.push(text, item)
            self.line_start = False
            return held + self.push(text, item)
        if not stripped:  # whitespace (a line break is a word boundary to a voice), or a character not complete yet
            if not text:
                self.line_start = False
            return self._after(text, [item])
        if all(c in _MARKS for c in stripped):
            return self._after(text, [])
        if self.line_start and (stripped in _BULLETS or stripped.isdigit() and not text[0].isspace()):
            self.held, self.marker = [item], stripped
            return []
        self.line_start = False
        return self._after(text, [item])

    def _after(self, text: str, out: list[T]) -> list[T]:
        if "\n" in text and not text[text.rindex("\n") + 1:].strip():
            self.line_start = True
        return out

    def flush(self) -> list[T]:
        held, self.held, self.marker = self.held, [], ""
        return held
