"""Reading CTC output: greedy, or a CTC prefix beam search with an n-gram LM fused in.

The speech decoder scores each upsampled position on its own (CTC), so its greedy reading
drops a phoneme wherever the blank scores a little higher, most often inside long words and
names. A language model over the unit sequences knows which phonemes follow which; in a
prefix beam search its log-probability, times a weight, and a bonus per unit are added to the
decoder's (shallow fusion, as CTC speech recognizers add a word LM). The LM here is an
n-gram over the unit sequences of registry texts, smoothed by interpolated Witten-Bell
(`UnitNgram.fit`), small enough to ship beside the decoder and fast on any CPU. The ctc
adaptor's hearing uses the same search over its LLM-token classes, with an n-gram over LLM
token ids (`symbols` maps each class to its token).

Both readers stream: `push` takes the log-probabilities of the positions the decoder just
computed and gives the units that are now certain (greedy: all; the beam search: those all
kept hypotheses agree on), `flush` the rest after the last position. Pushed in pieces or all
at once, the units are the same.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from omni_cli.e2e.state import CheckpointError
from omni_cli.errors import ConfigError

NEG = -1e30


def _logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    return a if b <= NEG else a + math.log1p(math.exp(b - a))


class UnitNgram:
    """An order-n model of unit sequences over `num_units` units, interpolated Witten-Bell.

    Symbol `num_units` stands for the sequence's edges: the history before the first unit is
    made of it, and predicting it ends the sequence. Stored per order as sorted context keys
    (the context's symbols in base num_units + 1), and for each context the units seen after
    it and their counts."""

    def __init__(self, order: int, num_units: int, tables: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]):
        if order < 1 or len(tables) != order:
            raise ConfigError(f"a unit n-gram needs order >= 1 and one table per order, got order {order} with {len(tables)}")
        self.order, self.num_units, self.base = order, num_units, num_units + 1
        self.tables = [(keys.astype(np.int64), offsets.astype(np.int64), words.astype(np.int64), counts.astype(np.float64))
                       for keys, offsets, words, counts in tables]
        self.totals = [np.add.reduceat(c, o[:-1]) if len(k) else np.zeros(0) for k, o, _, c in self.tables]
        self._dist = functools.lru_cache(maxsize=1 << 16)(self._logprobs)
        self._one = functools.lru_cache(maxsize=1 << 18)(self._logprob)
        self._context_row = functools.lru_cache(maxsize=1 << 16)(self._find_row)
        # order 1 has one context (none): its estimate of every symbol, once, where each history's starts
        self._unigram = self._interpolated((), np.full(self.base, 1.0 / self.base), range(1, 2))

    @classmethod
    def fit(cls, sequences: Iterable[Iterable[int]], order: int, num_units: int) -> UnitNgram:
        """Count every n-gram (n = 1 .. order) of the sequences, each padded with edge symbols."""
        base, edge = num_units + 1, num_units
        if base ** order >= 1 << 63:
            raise ConfigError(f"an order-{order} n-gram over {num_units} symbols is too large to index (lower the order)")
        padded = []
        for s in sequences:
            s = np.asarray(list(s), dtype=np.int64)
            if len(s) and (s.min() < 0 or s.max() >= num_units):
                raise ConfigError(f"unit ids must be in 0 .. {num_units - 1}")
            padded.append(np.concatenate([np.full(order - 1, edge), s, [edge]]))
        if not padded:
            raise ConfigError("a unit n-gram needs at least one sequence")
        tables = []
        for n in range(1, order + 1):
            keys = []
            for s in padded:
                if len(s) - (order - n) < n:
                    continue
                window = np.lib.stride_tricks.sliding_window_view(s[order - n:], n)  # only edge-padding an n-gram can see
                k = np.zeros(len(window), dtype=np.int64)
                for j in range(n):
                    k = k * base + window[:, j]
                keys.append(k)
            grams, counts = np.unique(np.concatenate(keys), return_counts=True)
            contexts, words = grams // base, grams % base
            starts = np.flatnonzero(np.r_[True, contexts[1:] != contexts[:-1]])
            tables.append((contexts[starts], np.r_[starts, len(grams)], words, counts))
        return cls(order, num_units, tables)

    def save(self, path: Path) -> None:
        arrays = {"order": np.array(self.order), "num_units": np.array(self.num_units)}
        for n, (keys, offsets, words, counts) in enumerate(self.tables, 1):
            arrays |= {f"keys{n}": keys, f"offsets{n}": offsets.astype(np.int32),
                       f"words{n}": words.astype(np.uint16 if self.base <= 1 << 16 else np.uint32),
                       f"counts{n}": counts.astype(np.uint32)}
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: Path) -> UnitNgram:
        try:
            with np.load(path) as z:
                order = int(z["order"])
                return cls(order, int(z["num_units"]),
                           [(z[f"keys{n}"], z[f"offsets{n}"], z[f"words{n}"], z[f"counts{n}"]) for n in range(1, order + 1)])
        except (OSError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a unit n-gram ({type(exc).__name__}: {exc})") from exc

    def _context(self, history: tuple[int, ...]) -> tuple[int, ...]:
        keep = self.order - 1
        return ((self.num_units,) * keep + tuple(history))[len(history):] if keep else ()

    def logprobs(self, history: tuple[int, ...]) -> np.ndarray:
        """log P(next | the last order - 1 symbols of `history`) over num_units + 1 symbols (the last: the end)."""
        return self._dist(self._context(history))

    def logprob(self, history: tuple[int, ...], symbol: int) -> float:
        """`logprobs(history)[symbol]`; over a large vocabulary (LLM tokens) without the whole distribution."""
        if self.base <= 4096:  # a few hundred units: one cached distribution serves every unit tried after it
            return float(self.logprobs(history)[symbol])
        return self._one(self._context(history), symbol)

    def sequence_logprob(self, symbols: Sequence[int], end: bool = True) -> float:
        """log P of the whole sequence from its start (and, with `end`, of the end after it)."""
        need = self.order - 1
        seq = list(symbols) + ([self.num_units] if end else [])
        return sum(self.logprob(tuple(seq[max(0, i - need):i]), u) for i, u in enumerate(seq))

    def _row(self, n: int, history: tuple[int, ...]) -> tuple[int, int, int] | None:
        """Where order n's table lists what followed the last n - 1 symbols of `history`: (the
        context's index, its first and past-last entry), or None for an unseen context."""
        return self._context_row(n, tuple(history[len(history) - (n - 1):]) if n > 1 else ())

    def _find_row(self, n: int, context: tuple[int, ...]) -> tuple[int, int, int] | None:
        key = 0
        for x in context:
            key = key * self.base + x
        keys, offsets = self.tables[n - 1][:2]
        i = int(np.searchsorted(keys, key))
        if i == len(keys) or keys[i] != key:
            return None
        return i, int(offsets[i]), int(offsets[i + 1])

    def _logprob(self, history: tuple[int, ...], symbol: int) -> float:
        p = float(self._unigram[symbol])
        for n in range(2, self.order + 1):
            row = self._row(n, history)
            if row is None:
                continue  # an unseen context: the lower order's estimate stands
            i, lo, hi = row
            words, counts = self.tables[n - 1][2:]
            j = lo + int(np.searchsorted(words[lo:hi], symbol))
            seen = counts[j] if j < hi and words[j] == symbol else 0.0
            p = (seen + p * (hi - lo)) / (self.totals[n - 1][i] + hi - lo)
        return math.log(p)

    def _logprobs(self, history: tuple[int, ...]) -> np.ndarray:
        return np.log(self._interpolated(history, self._unigram, range(2, self.order + 1)))

    def _interpolated(self, history: tuple[int, ...], p: np.ndarray, orders: range) -> np.ndarray:
        """Every symbol's estimate after `history`: `p`, the estimate below `orders`, interpolated
        with each of them in turn (`p` itself where none holds the context; it is never changed)."""
        for n in orders:
            row = self._row(n, history)
            if row is None:
                continue
            i, lo, hi = row
            words, counts = self.tables[n - 1][2:]
            q = p * (hi - lo)
            q[words[lo:hi]] += counts[lo:hi]
            p = q / (self.totals[n - 1][i] + hi - lo)
        return p


def ctc_collapse(units: list[int], blank: int, previous: int | None = None) -> list[int]:
    """Greedy CTC: collapse consecutive repeats (also across `previous`, the last raw
    prediction before these), then drop blanks."""
    out = []
    for u in units:
        if u != previous and u != blank:
            out.append(u)
        previous = u
    return out


class GreedyUnits:
    """Greedy CTC: argmax per position, repeats collapsed (across pushes too), blanks dropped."""

    def __init__(self, blank: int):
        self.blank = blank
        self.last: int | None = None

    def push(self, logp: np.ndarray) -> list[int]:
        raw = np.asarray(logp).argmax(-1).tolist()
        out = ctc_collapse(raw, self.blank, self.last)
        self.last = raw[-1] if raw else self.last
        return out

    def flush(self) -> list[int]:
        return []


class BeamUnits:
    """CTC prefix beam search (Hannun et al., arXiv 1408.2873) over streamed (T, classes)
    log-probabilities, keeping `beam` hypotheses scored by their CTC log-probability (summed
    over all their alignments) + `weight` x the LM's log-probability of their classes (each the
    LM's symbol `symbols[class]`, or the class itself) + `bonus` per class. A position extends
    them by the classes within `prune` of its best, or (`per_frame`, for a large vocabulary such
    as the adaptor's LLM tokens) by its `per_frame` most probable classes above `floor`, the
    blank always. What every kept hypothesis begins with is certain: `push` gives it out; with
    `max_pending`, also the best hypothesis's units but its last `max_pending` (those that
    disagree with them dropped): the hypotheses may differ from early on for long, and speech
    cannot wait for them. `flush` ends the search (the LM's end-of-sequence score included) and
    gives the rest of the best one; `nbest` lists them all. torchaudio's decoder would do it, but
    this project's torch build has no torchaudio, and pyctcdecode reads words out of characters,
    not class ids."""

    def __init__(self, blank: int, beam: int, lm: UnitNgram | None = None, weight: float = 0.0, bonus: float = 0.0,
                 prune: float = 8.0, per_frame: int = 0, floor: float = -math.inf, max_pending: int = 0,
                 symbols: Sequence[int] | None = None):
        if beam < 1 or max_pending < 0:
            raise ConfigError(f"the unit beam must be >= 1 and max_pending >= 0, got {beam} and {max_pending}")
        if lm is not None:
            if symbols is None and lm.num_units != blank:
                raise ConfigError(f"the unit LM knows {lm.num_units} units but the speech decoder predicts {blank}")
            if symbols is not None and (len(symbols) != blank or (len(symbols) and max(symbols) >= lm.num_units)):
                raise ConfigError(f"the n-gram knows {lm.num_units} symbols; the search's {blank} classes are not all among them")
        self.blank, self.beam, self.lm, self.weight, self.bonus, self.prune = blank, beam, lm, weight, bonus, prune
        self.per_frame, self.floor = per_frame, floor
        self.max_pending = max_pending
        self.symbols = list(symbols) if symbols is not None else None
        self.done: list[int] = []  # units given out
        # the units after `done` -> [log P(blank last), log P(unit last), LM + bonus score of the whole prefix]
        self.hyps: dict[tuple[int, ...], list[float]] = {(): [0.0, NEG, 0.0]}

    def _history(self, tail: tuple[int, ...]) -> tuple[int, ...] | None:
        """The LM's history (its symbols) after `done` + `tail`; None without an LM."""
        if self.lm is None or not self.weight:
            return None
        need = self.lm.order - 1
        history = (tuple(self.done[-need:]) + tail)[-need:] if need else ()
        return tuple(self.symbols[c] for c in history) if self.symbols is not None else history

    def _lm(self, history: tuple[int, ...] | None, unit: int | None) -> float:
        """The LM's log-probability of `unit` (None: the end) after `history` (`_history`'s), weighted."""
        if history is None:
            return 0.0
        if unit is None:
            unit = self.lm.num_units
        elif self.symbols is not None:
            unit = self.symbols[unit]
        return self.weight * self.lm.logprob(history, unit)

    def _tried(self, logp: np.ndarray) -> list[tuple[list[int], list[float]]]:
        """The classes each position extends the hypotheses by, and their log-probabilities."""
        if not self.per_frame:
            chosen = [np.flatnonzero(row.astype(np.float64) >= float(row.max()) - self.prune) for row in logp]
        else:
            k = min(self.per_frame, logp.shape[1])
            # torch's top-k: tens of times numpy's argpartition over tens of thousands of classes
            top = torch.topk(torch.from_numpy(logp), k, dim=1).indices.numpy()
            chosen = [[c for c in row.tolist() if c != self.blank and values[c] > self.floor] + [self.blank]
                      for row, values in zip(top, logp)]
        return [(list(map(int, classes)), row[classes].tolist()) for classes, row in zip(chosen, logp)]

    def push(self, logp: np.ndarray) -> list[int]:
        # float32 in (writable, for torch's top-k), each tried value a Python float out
        logp = np.require(logp, dtype=np.float32, requirements=("C", "W"))
        for tried, values in self._tried(logp):
            new: dict[tuple[int, ...], list[float]] = {}

            def add(tail, pb, pnb, score):
                h = new.get(tail)
                if h is None:
                    new[tail] = [pb, pnb, score]
                else:
                    h[0], h[1] = _logaddexp(h[0], pb), _logaddexp(h[1], pnb)

            for tail, (pb, pnb, score) in self.hyps.items():
                total = _logaddexp(pb, pnb)
                last = tail[-1] if tail else (self.done[-1] if self.done else None)
                history = self._history(tail)
                for u, p in zip(tried, values):
                    if u == self.blank:
                        add(tail, total + p, NEG, score)
                        continue
                    longer = tail + (u,)
                    grown = new[longer][2] if longer in new else score + self._lm(history, u) + self.bonus
                    if u == last:  # a repeat collapses, unless a blank came between
                        add(tail, NEG, pnb + p, score)
                        add(longer, NEG, pb + p, grown)
                    else:
                        add(longer, NEG, total + p, grown)
            ranked = sorted(new.items(), key=lambda kv: -(_logaddexp(kv[1][0], kv[1][1]) + kv[1][2]))
            self.hyps = dict(ranked[: self.beam])
        return self._settle()

    def _settle(self) -> list[int]:
        tails = list(self.hyps)
        n = min(len(t) for t in tails)
        common = 0
        while common < n and all(t[common] == tails[0][common] for t in tails):
            common += 1
        if self.max_pending and len(tails[0]) - self.max_pending > common:
            common = len(tails[0]) - self.max_pending  # the best one's, the others that disagree dropped
            self.hyps = {t: h for t, h in self.hyps.items() if t[:common] == tails[0][:common]}
        if not common:
            return []
        out = list(tails[0][:common])
        self.done += out
        self.hyps = {t[common:]: h for t, h in self.hyps.items()}
        return out

    def nbest(self) -> list[tuple[list[int], float]]:
        """Every kept hypothesis so far, whole, with its score (the LM's end-of-sequence score
        included), best first."""
        found = []
        for tail, (pb, pnb, score) in self.hyps.items():
            found.append((self.done + list(tail), _logaddexp(pb, pnb) + score + self._lm(self._history(tail), None)))
        return sorted(found, key=lambda h: -h[1])

    def flush(self) -> list[int]:
        best = self.nbest()[0][0][len(self.done):]
        self.done += best
        self.hyps = {(): [0.0, NEG, 0.0]}
        return best
