"""The `omni` command line: parses options, calls the library, renders the results.

The entry point (`main`, `app`) and the commands that use models: transcribe, respond, talk
and eval; the commands that make them (models, data, train) are in `cli_build`, what both
share (--debug, `user_errors`) in `cli_common`.

Data goes to stdout (transcripts, answers, JSON); progress, tables and diagnostics go to
stderr. Expected failures (`OmniError`) become one red line and a non-zero exit; a
traceback is shown only with --debug (anywhere on the command line, or OMNI_DEBUG=1).
"""

from __future__ import annotations

import json
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from omni_cli import __version__, cli_common
from omni_cli import render as ui
from omni_cli.cli_build import data_app, models_app, train_app
from omni_cli.cli_common import HELP_OPTIONS, user_errors
from omni_cli.errors import ConfigError, OmniError

app = typer.Typer(
    name="omni",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    add_completion=False,
    context_settings=HELP_OPTIONS,
)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"omni {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    """Spoken conversation with LLMs: transcribe, respond, and measure how well and how fast.

    Add --debug anywhere on the command line to see tracebacks.

    [bold]Examples:[/]
      omni respond examples/question.wav
      omni transcribe recordings/ --format json
      omni models
    """


# -- omni transcribe --------------------------------------------------------------------


class Format(str, Enum):
    txt = "txt"
    json = "json"
    srt = "srt"
    vtt = "vtt"


class Backend(str, Enum):
    faster_whisper = "faster-whisper"
    openai_whisper = "openai-whisper"


class TranscribeBackend(str, Enum):
    faster_whisper = "faster-whisper"
    openai_whisper = "openai-whisper"
    e2e = "e2e"


AsrModelOpt = Annotated[
    str | None,
    typer.Option("--asr", help="Whisper model: 'tiny.en' (embedded), a local folder/.pt, or a name such as large-v3 (network)."),
]
BackendOpt = Annotated[Backend, typer.Option("--asr-backend", help="Whisper implementation.")]
BeamOpt = Annotated[int, typer.Option("--beam-size", min=1, help="Beam width for Whisper decoding (1 = greedy).")]
E2EBeamOpt = Annotated[int | None, typer.Option("--e2e-beam", min=1, help="e2e with a ctc adaptor: transcripts its beam search keeps for the LLM to choose among; 1: the greedy one, fastest (default: the model's own; 16 for the offline default).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="Where models run: cpu, or cuda / cuda:N with a GPU build of torch.")]
MaxDurOpt = Annotated[float, typer.Option("--max-duration", min=1.0, help="Refuse audio longer than this many seconds.")]


@app.command()
def transcribe(
    paths: Annotated[list[Path], typer.Argument(help="Audio files and/or folders (searched recursively).", show_default=False)],
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.txt,
    ref: Annotated[Path | None, typer.Option("--ref", help="Reference manifest: TSV (path<TAB>text) or JSONL (audio, text).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Write one output file per input into this folder.")] = None,
    asr_model: AsrModelOpt = None,
    backend: Annotated[TranscribeBackend, typer.Option("--asr-backend", help="Whisper implementation, or e2e: the end-to-end model repeating what it heard.")] = TranscribeBackend.faster_whisper,
    beam_size: BeamOpt = 5,
    device: DeviceOpt = "cpu",
    max_duration: MaxDurOpt = 1800.0,
    e2e_model: Annotated[str | None, typer.Option("--e2e-model", help="With --asr-backend e2e: the end-to-end model (default: the shipped offline one).")] = None,
    e2e_beam: E2EBeamOpt = None,
) -> None:
    """Transcribe audio files and folders with Whisper (or an end-to-end model); with references, report per-file and corpus WER.

    References: a .txt beside each audio file (same name), or --ref. WER is computed after
    Whisper's English text normalizer on both sides. A file that fails is reported and the rest go on.
    --asr-backend e2e transcribes with the end-to-end speech LLM itself, asked to repeat exactly
    what was said: what that model hears, measured like Whisper.

    [bold]Examples:[/]
      omni transcribe talk.wav
      omni transcribe recordings/ --format json --ref refs.tsv > results.json
      omni transcribe lecture.mp3 --format srt --out subs/
      omni transcribe recordings/ --asr-backend e2e       # what the end-to-end model hears
      omni transcribe recordings/ --asr-backend e2e --e2e-beam 1   # ... by its greedy transcript
    """
    from omni_cli.asr import AsrOptions, load_asr
    from omni_cli.audio import check_output_dir, shown
    from omni_cli.registry import require_device
    from omni_cli.transcribe import OutputTree, corpus_wer, transcribe_paths

    with user_errors():
        if len(paths) > 1 or any(p.is_dir() for p in paths):
            if fmt in (Format.srt, Format.vtt) and out_dir is None:
                raise ConfigError(f"--format {fmt.value} with several files needs --out DIR (one subtitle file per input)")
        if (e2e_model is not None or e2e_beam is not None) and backend != TranscribeBackend.e2e:
            raise ConfigError("--e2e-model and --e2e-beam go with --asr-backend e2e")
        if backend == TranscribeBackend.e2e and asr_model is not None:
            raise ConfigError("--asr names a Whisper model; with --asr-backend e2e, give the model with --e2e-model")
        if out_dir is not None:
            check_output_dir(out_dir, "--out")
        require_device(device)
        with ui.err.status("loading the end-to-end model ..." if backend == TranscribeBackend.e2e else "loading Whisper ..."):
            asr = load_asr(e2e_model if backend == TranscribeBackend.e2e else asr_model, backend.value, AsrOptions(beam_size=beam_size), device,
                           e2e_beam)
        pieces: dict = {}  # a long file's own bar, while it streams through

        def on_progress(path, done, seconds):
            from rich.markup import escape

            if path not in pieces:
                pieces[path] = bar.add_task(escape(f"  {shown(path)}"), total=seconds or None)
            bar.update(pieces[path], completed=done)

        total, results_iter = transcribe_paths(asr, paths, ref, max_duration, on_progress)
        single = total == 1
        tree = OutputTree(out_dir, paths) if out_dir is not None else None
        results = []
        interrupted = False
        with ui.progress() as bar:
            task = bar.add_task("transcribing", total=total)
            try:
                for r in results_iter:
                    results.append(r)
                    bar.advance(task)
                    if r.path in pieces:
                        bar.remove_task(pieces.pop(r.path))
                    _emit_transcript(r, fmt, tree, single, bar.console)
            except KeyboardInterrupt:
                interrupted = True  # keep and print what is done
        if fmt == Format.json and out_dir is None:
            ui.out(json.dumps([r.to_json() for r in results], ensure_ascii=False, indent=2) + "\n")
        cwer = corpus_wer(results)
        failed = [r for r in results if r.error]
        if not single or cwer is not None:
            ui.err.print(ui.transcribe_table(results, cwer))
        if out_dir is not None:
            ui.note(f"wrote {len(results) - len(failed)} file(s) to {shown(out_dir)}")
        if interrupted:
            ui.error(f"interrupted after {len(results)} of {total} file(s); the results above are kept")
            raise typer.Exit(130)
        if failed:
            if single:
                raise OmniError(failed[0].error)
            ui.error(f"{len(failed)} of {len(results)} file(s) failed")
            raise typer.Exit(1)


def _emit_transcript(r, fmt: Format, tree, single: bool, console) -> None:
    """Show or write one finished result: a file in the --out tree, or stdout."""
    from omni_cli.audio import shown
    from omni_cli.transcribe import render

    if r.error:
        if not single:
            ui.failed(r.error, console)
    elif tree is not None:
        tree.write(r, fmt.value)
    elif fmt == Format.txt:
        ui.out(render(r, "txt") if single else f"{shown(r.path)}\t{r.text}\n")
    elif fmt in (Format.srt, Format.vtt):
        ui.out(render(r, fmt.value))


# -- omni respond -----------------------------------------------------------------------


class Mode(str, Enum):
    cascade = "cascade"
    e2e = "e2e"
    both = "both"


class TtsEngine(str, Enum):
    piper = "piper"
    espeak = "espeak"


class LlmDtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"


LlmOpt = Annotated[str | None, typer.Option("--llm", help="Cascade LLM: 'smollm2-135m-instruct' (embedded), a local folder or .gguf, or a hub id (network).")]
TtsOpt = Annotated[TtsEngine, typer.Option("--tts", help="Voice engine for the cascade.")]
VoiceOpt = Annotated[str | None, typer.Option("--voice", help="Piper voice (.onnx path) or espeak-ng voice name.")]
E2EModelOpt = Annotated[str | None, typer.Option("--e2e-model", help="End-to-end model: the offline default, a trained folder, or a published-format folder/hub id.")]
VocoderOpt = Annotated[str | None, typer.Option("--vocoder", help="Unit vocoder for e2e: 'piper' or a unit HiFi-GAN folder (default: the model's own).")]
OmegaOpt = Annotated[str, typer.Option("--omega", help="e2e: units per streamed audio chunk, 'auto' (the default for the model's unit vocoder), or 'all' to vocode once at the end.")]
MaxTokensOpt = Annotated[int, typer.Option("--max-new-tokens", min=1, help="Longest answer in tokens.")]
MaxSentencesOpt = Annotated[int, typer.Option("--max-sentences", min=0, help="Brief, for speech: the answer ends at the sentence that reaches this many sentences (or 20 words per sentence); 0: no limit but --max-new-tokens.")]
SystemPromptOpt = Annotated[str | None, typer.Option("--system-prompt", help="Replace the spoken-style system prompt (cascade).")]


@app.command()
def respond(
    audio_path: Annotated[Path, typer.Argument(metavar="AUDIO", help="The spoken request (any common audio format).", show_default=False)],
    mode: Annotated[Mode, typer.Option("--mode", "-m", help="Pipeline: cascade, e2e (end-to-end speech LLM), or both side by side.")] = Mode.cascade,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Where to write the spoken answer (wav). Default: <input name>.reply.wav here; with --mode both, .cascade/.e2e are added.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (transcript, text, audio, metrics) instead of text.")] = False,
    asr_model: AsrModelOpt = None,
    backend: BackendOpt = Backend.faster_whisper,
    beam_size: BeamOpt = 5,
    llm: LlmOpt = None,
    tts: TtsOpt = TtsEngine.piper,
    voice: VoiceOpt = None,
    e2e_model: E2EModelOpt = None,
    vocoder: VocoderOpt = None,
    omega: OmegaOpt = "auto",
    e2e_beam: E2EBeamOpt = None,
    max_new_tokens: MaxTokensOpt = 160,
    max_sentences: MaxSentencesOpt = 3,
    system_prompt: SystemPromptOpt = None,
    device: DeviceOpt = "cpu",
    max_duration: MaxDurOpt = 1800.0,
) -> None:
    """Answer a spoken request with text and speech, and report how fast it went.

    cascade: Whisper transcribes, the LLM's answer streams, and each sentence is spoken as soon as
    it is complete. e2e: the speech LLM hears the audio directly, and a CTC speech decoder turns its
    hidden states into units that are vocoded every --omega units while the text is still being
    written. The answer text goes to stdout, the spoken answer to --out.

    [bold]Examples:[/]
      omni respond question.wav
      omni respond question.wav --out answer.wav --json
      omni respond question.wav --mode both
      omni respond question.wav --mode e2e --e2e-model ./my-omni-model --omega 20
      omni respond question.wav --mode e2e --e2e-beam 1       # hear by the greedy transcript: fastest
      omni respond question.mp3 --tts espeak --llm ./my-llm-folder
    """
    from omni_cli.audio import check_output_file, load_audio

    with user_errors():
        modes = ["cascade", "e2e"] if mode == Mode.both else [mode.value]
        base = out if out is not None else Path(f"{audio_path.stem}.reply.wav")
        check_output_file(base, "--out")
        audio = load_audio(audio_path, max_duration_s=max_duration)
        pipelines = {}
        config = _pipeline_config(modes, asr_model, backend.value, beam_size, llm, tts.value, voice, e2e_model, vocoder,
                                  omega, max_new_tokens, system_prompt, device, max_sentences, e2e_beam)
        with ui.err.status("loading models ..."):
            for m in modes:
                pipelines[m] = _load_pipeline(m, config)
        payloads = {}
        for m, pipeline in pipelines.items():
            target = base if len(modes) == 1 else base.with_name(f"{base.stem}.{m}{base.suffix or '.wav'}")
            if not as_json and len(modes) > 1:
                ui.err.rule(m)
            payloads[m] = _respond_once(pipeline, audio, audio_path, target, as_json)
        if as_json:
            payload = payloads[modes[0]] if len(modes) == 1 else {"mode": "both", "input": payloads["cascade"]["input"], "results": payloads}
            ui.out(json.dumps(payload, ensure_ascii=False, indent=2) + "\n")
        elif len(modes) > 1:
            ui.err.print(ui.compare_table({m: p["metrics"] for m, p in payloads.items()}))


def _respond_once(pipeline, audio, audio_path: Path, target: Path, as_json: bool) -> dict:
    """Run one pipeline on the request, render its events, write its audio; the JSON payload."""
    from omni_cli.audio import SAMPLE_RATE, shown, write_wav
    from omni_cli.events import Interrupted, TextDelta, Transcript, collect

    minutes = len(audio) / SAMPLE_RATE / 60
    # a long request takes a while to hear: say so until the first words come
    waiting = ui.err.status(f"listening to a {minutes:.1f} min request ...") if minutes >= 0.5 and not as_json else None
    if waiting is not None:
        waiting.start()

    def render(e) -> None:
        if waiting is not None and isinstance(e, (Transcript, TextDelta)):
            waiting.stop()
        if isinstance(e, Transcript) and not as_json:
            ui.note(f"heard: {e.text}")
        elif isinstance(e, TextDelta) and not as_json:
            ui.out(e.text)

    try:
        response = collect(_input_errors_name(audio_path, pipeline.run(audio)), pipeline.sample_rate, render)
    except Interrupted as stop:
        if waiting is not None:
            waiting.stop()
        if stop.response.audio.size:
            write_wav(target, stop.response.audio, pipeline.sample_rate)
            ui.note(f"\ninterrupted: the answer so far is in {shown(target)}")
        raise typer.Exit(130) from None
    finally:
        if waiting is not None:
            waiting.stop()
    reply, text, transcript = response.audio, response.text, response.transcript
    write_wav(target, reply, pipeline.sample_rate)
    metrics = {k: (None if v is None else round(v, 4)) for k, v in response.metrics.items()}
    if not as_json:
        ui.out("\n")
        if pipeline.mode == "e2e":
            ui.note("(end-to-end: no transcript needed)")
        ui.err.print(ui.metrics_table(metrics, title=f"{pipeline.mode} timings (s)"))
        ui.note(f"spoken answer: {shown(target)} ({len(reply) / pipeline.sample_rate:.1f} s)")
    return {
        "mode": pipeline.mode,
        "input": shown(audio_path),
        "transcript": transcript,
        "text": text,
        "audio": shown(target),
        "sample_rate": pipeline.sample_rate,
        "metrics": metrics,
    }


# -- omni talk --------------------------------------------------------------------------


class TalkMode(str, Enum):
    cascade = "cascade"
    e2e = "e2e"


@app.command()
def talk(
    mode: Annotated[TalkMode, typer.Option("--mode", "-m", help="Pipeline: cascade (Whisper -> LLM -> TTS) or e2e (end-to-end speech LLM).")] = TalkMode.cascade,
    input_path: Annotated[Path | None, typer.Option("--input", "-i", help="Play this recording into the conversation as if it came from the microphone (no audio device needed).")] = None,
    fast: Annotated[bool, typer.Option("--fast", help="With --input: play the file 4x faster than real time, and hold it while the models compute.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Record the whole conversation to this wav (left channel: you; right: the answers as played).")] = None,
    save: Annotated[Path | None, typer.Option("--save", help="Write the session (turns, texts, timings) to DIR/session.jsonl.")] = None,
    push_to_talk: Annotated[bool, typer.Option("--push-to-talk", help="Press Enter to start talking and Enter again to stop, instead of voice detection.")] = False,
    silence_ms: Annotated[int, typer.Option("--silence-ms", min=100, help="This much silence (ms) ends your turn.")] = 700,
    vad_threshold: Annotated[float, typer.Option("--vad-threshold", min=0.05, max=0.95, help="Speech probability that starts your turn; lower is more sensitive.")] = 0.5,
    barge_in: Annotated[bool, typer.Option("--barge-in/--no-barge-in", help="Speaking during an answer stops it and starts a new turn (with speakers, use headphones).")] = True,
    input_device: Annotated[str | None, typer.Option("--input-device", help="Microphone: a device index or part of its name (list them: python -m sounddevice). Default: the system's.")] = None,
    output_device: Annotated[str | None, typer.Option("--output-device", help="Speakers: a device index or part of its name. Default: the system's.")] = None,
    asr_model: AsrModelOpt = None,
    backend: BackendOpt = Backend.faster_whisper,
    beam_size: BeamOpt = 5,
    llm: LlmOpt = None,
    tts: TtsOpt = TtsEngine.piper,
    voice: VoiceOpt = None,
    e2e_model: E2EModelOpt = None,
    vocoder: VocoderOpt = None,
    omega: OmegaOpt = "auto",
    e2e_beam: E2EBeamOpt = None,
    max_new_tokens: MaxTokensOpt = 160,
    max_sentences: MaxSentencesOpt = 3,
    system_prompt: SystemPromptOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Talk with the model: live, multi-turn, from the microphone (or a recording) to the speakers.

    Silero VAD finds where you start and stop speaking; the answer plays as its audio arrives, and
    earlier turns are kept as context. Speaking during an answer stops it (barge-in). The screen shows
    the state, what was heard, the answer as it is written, and each turn's first-audio latency and
    timings. Without a microphone, --input plays a wav in as if spoken live. Ctrl-C ends the
    conversation and still writes --output and --save.

    [bold]Examples:[/]
      omni talk
      omni talk --push-to-talk --silence-ms 1000
      omni talk --input-device USB --output-device 3
      omni talk --input two_questions.wav --output conversation.wav --save session/
      omni talk --input two_questions.wav --fast --mode e2e --e2e-model ./my-omni-model
    """
    from omni_cli.audio import check_output_dir, check_output_file, load_audio
    from omni_cli.talk import Conversation, KeySegmenter, TalkOptions, VadSegmenter
    from omni_cli.talk_audio import (
        FAST_SPEED,
        EnterKey,
        FileSource,
        Microphone,
        device_spec,
        open_speaker,
        xrun_note,
    )
    from omni_cli.talk_view import TalkView

    with user_errors():
        if fast and input_path is None:
            raise ConfigError("--fast needs --input FILE (the microphone runs in real time)")
        if output is not None:
            check_output_file(output, "--output")
        if save is not None:
            check_output_dir(save, "--save")
        options = TalkOptions(vad_threshold=vad_threshold, silence_ms=silence_ms, barge_in=barge_in)
        if input_path is not None:
            source = FileSource(load_audio(input_path), speed=FAST_SPEED if fast else 1.0, holds_for_answers=fast)
        else:
            source = Microphone(device_spec(input_device))  # no device: an InputError that says how to use --input
        config = _pipeline_config([mode.value], asr_model, backend.value, beam_size, llm, tts.value, voice, e2e_model, vocoder,
                                  omega, max_new_tokens, system_prompt, device, max_sentences, e2e_beam)
        with ui.err.status("loading models ..."):
            pipeline = _load_pipeline(mode.value, config)
        # opened once the models are loaded: a stream idle through the loading only underruns
        speaker = None if fast else open_speaker(device_spec(output_device))  # a fast file plays only into --output
        if speaker is None and input_path is None:
            ui.note("no speakers found: the answers are not played (record them with --output)")
        conversation = Conversation(pipeline, speaker, options, record=output is not None)
        key = EnterKey() if push_to_talk else None
        stream = conversation.run(source, KeySegmenter(key) if key else VadSegmenter(options))
        interrupted = False
        try:
            with TalkView(ui.err, pipeline.mode, push_to_talk) as view:
                for event in stream:
                    view.show(event)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            stream.close()  # a turn in progress is kept, marked interrupted
            for device_ in (key, source, speaker):
                if hasattr(device_, "close"):
                    device_.close()
            _talk_save(conversation, output, save, pipeline.sample_rate)
            if note := xrun_note(source, speaker):
                ui.note(note)
        if interrupted:
            raise typer.Exit(130)


def _load_pipeline(mode: str, config):
    """`pipelines.load_pipeline` (a seam the tests replace with tiny models)."""
    from omni_cli.pipelines import load_pipeline

    return load_pipeline(mode, config)


def _pipeline_config(modes, asr_model, backend, beam_size, llm, tts, voice, e2e_model, vocoder, omega, max_new_tokens,
                     system_prompt, device, max_sentences=3, e2e_beam=None):
    """The PipelineConfig of the options `respond` and `talk` share (omega resolved for e2e)."""
    from omni_cli.pipelines import PipelineConfig

    if "e2e" in modes:
        from omni_cli.e2e.load import parse_omega

        omega = parse_omega(omega, e2e_model, vocoder)
    else:
        omega = PipelineConfig.omega
    return PipelineConfig(asr_model=asr_model, asr_backend=backend, beam_size=beam_size, llm=llm, tts=tts, voice=voice,
                          system_prompt=system_prompt, e2e_model=e2e_model, vocoder=vocoder, omega=omega,
                          max_new_tokens=max_new_tokens, max_sentences=max_sentences, device=device, e2e_beam=e2e_beam)


def _talk_save(conversation, output: Path | None, save: Path | None, sample_rate: int) -> None:
    """Write the session file and the two-sided recording (also after Ctrl-C), and say where."""
    turns = conversation.turns
    ui.note(f"{len(turns)} turn(s)" + (f", {sum(t.interrupted for t in turns)} interrupted" if any(t.interrupted for t in turns) else ""))
    for line in conversation.save(output, save, sample_rate):
        ui.note(line)


def _input_errors_name(path: Path, events):
    """Prefix the input's name to an InputError the pipeline raises about the audio."""
    from omni_cli.audio import shown
    from omni_cli.errors import InputError

    try:
        yield from events
    except InputError as exc:
        raise InputError(f"{shown(path)}: {exc}") from exc


# -- omni eval ----------------------------------------------------------------------------------


@app.command("eval")
def eval_cmd(
    paths: Annotated[list[Path] | None, typer.Argument(help="Audio folders (recursive; a .txt beside a file is its transcript), audio files, or manifests (.jsonl / .tsv: audio, transcript, answer).", show_default=False)] = None,
    bench: Annotated[str | None, typer.Option("--bench", help="A built-in set, built once and cached: real-speech (real human speech with transcripts) or instructs2s-eval (spoken AlpacaEval instructions, held-out voices).")] = None,
    modes: Annotated[str, typer.Option("--modes", help="Comma-separated pipelines: cascade, e2e.")] = "cascade",
    omega: Annotated[str, typer.Option("--omega", help="e2e: comma-separated units per audio chunk ('auto': the default for the model's unit vocoder; 'all': vocode once at the end); each is a condition, e.g. 10,20,40,all.")] = "auto",
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of the run: results.jsonl, summary.json, results.csv, report.md, report.html, plots, answers/ (the spoken answers).")] = Path("omni-eval"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out: skip the items already in results.jsonl.")] = False,
    workers: Annotated[int | None, typer.Option("--workers", "-j", min=1, help="Worker processes, each loading the models once (with --ray: actors; default one per cluster CPU).")] = None,
    ray_address: Annotated[str | None, typer.Option("--ray", help="Shard the items over a Ray cluster at this address ('auto': the local cluster); needs `pip install 'omni[ray]'` and audio paths readable on every node.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N items.")] = None,
    asr_wer: Annotated[bool, typer.Option("--asr-wer/--no-asr-wer", help="Transcribe each spoken answer with Whisper for the ASR-WER.")] = True,
    naturalness: Annotated[bool, typer.Option("--mos/--no-mos", help="Rate each spoken answer's naturalness with DNSMOS (1-5; about a second per answer on a CPU).")] = True,
    judge_asr: Annotated[str | None, typer.Option("--judge-asr", help="Whisper model that transcribes the spoken answers (default: the --asr model).")] = None,
    judge: Annotated[str | None, typer.Option("--judge", help="Chat model that grades each answer 1-5 for how well it helps with the question: a hub id, a local folder, a registry name, or with --judge-url the model name at that endpoint. Scores go to --out/judge.jsonl.")] = None,
    judge_url: Annotated[str | None, typer.Option("--judge-url", help="OpenAI-compatible endpoint of the --judge model, e.g. http://localhost:8000/v1 (key from OMNI_JUDGE_API_KEY or OPENAI_API_KEY).")] = None,
    asr_model: AsrModelOpt = None,
    backend: BackendOpt = Backend.faster_whisper,
    beam_size: BeamOpt = 5,
    llm: LlmOpt = None,
    tts: TtsOpt = TtsEngine.piper,
    voice: VoiceOpt = None,
    e2e_model: E2EModelOpt = None,
    vocoder: Annotated[str | None, typer.Option("--vocoder", help="Unit vocoder for e2e (default: the model's own).")] = None,
    e2e_beam: E2EBeamOpt = None,
    max_new_tokens: MaxTokensOpt = 160,
    max_sentences: MaxSentencesOpt = 3,
    device: DeviceOpt = "cpu",
    max_duration: MaxDurOpt = 1800.0,
    llm_dtype: Annotated[LlmDtype | None, typer.Option("--llm-dtype", help="Both pipelines' LLM weights (default: bfloat16 on a CPU with native bfloat16, else float32). float32 gives the same text the same answer in both pipelines, so answers differ only by what each heard; bfloat16 decodes about twice as fast on such a CPU but the path alone changes answers (40 typed AlpacaEval requests fed to both pipelines: 14 answers identical, chrF 70; float32: 40 of 40).", show_default=False)] = None,
    compare: Annotated[tuple[Path, Path] | None, typer.Option("--compare", help="Compare two finished runs (--out folders) on the items both have: B - A per figure, marked better or worse; JSON to stdout.", show_default=False)] = None,
) -> None:
    """Evaluate audio folders or manifests through the cascade and the end-to-end pipeline, side by side.

    Per item and condition: ASR time, time to first text token, first-audio latency, total time,
    real-time factor, WER of what was heard (with a reference: the cascade's transcript, e2e's own repeat), ASR-WER of the spoken answer, spoken
    words per second, answer length and the longest wait between audio chunks. Rows are appended to
    --out/results.jsonl as items finish (--resume continues a stopped run); the spoken answers are
    kept in --out/answers; summary.json, results.csv, latency.png, omega_sweep.png, report.md and
    report.html (one page with every question and answer to listen to) are written at the end, and
    after Ctrl-C. A bad item is recorded with its reason.

    [bold]Examples:[/]
      omni eval recordings/ --out runs/eval
      omni eval --bench real-speech --modes cascade --limit 10
      omni eval --bench instructs2s-eval --modes cascade,e2e --e2e-model ./my-omni-model --omega 10,20,40,all
      omni eval manifest.jsonl --workers 4 --out runs/eval --resume
      omni eval --bench real-speech --modes cascade,e2e --judge Qwen/Qwen2.5-7B-Instruct --device cuda
      omni eval --out runs/eval --resume --judge llama3.1 --judge-url http://localhost:11434/v1   # grade a finished run
      omni eval /shared/audio/ --ray auto --out runs/eval
      omni eval --compare runs/eval-before runs/eval-after
    """
    from omni_cli import evaluate as ev
    from omni_cli.audio import shown

    if compare is not None:
        with user_errors():
            comparison = ev.compare_runs(*compare)
            header, rows = ev.compare_table(comparison)
            ui.err.print(ui.eval_table(header, rows))
            ui.note(f"{comparison['items']} item(s) in both runs; median per item, corpus figures as they are; B = {comparison['b']}")
            ui.out(json.dumps(comparison, indent=2, ensure_ascii=False) + "\n")
        return
    with user_errors():
        config = ev.EvalConfig(
            modes=ev.parse_modes(modes), omegas=ev.parse_omegas(omega, e2e_model, vocoder), asr_model=asr_model, asr_backend=backend.value,
            beam_size=beam_size, llm=llm, tts=tts.value, voice=voice, e2e_model=e2e_model, vocoder=vocoder, e2e_beam=e2e_beam,
            max_new_tokens=max_new_tokens, max_sentences=max_sentences, asr_wer=asr_wer, judge_asr=judge_asr, device=device, max_duration_s=max_duration,
            answers_dir=str(out / "answers") if out else None, naturalness=naturalness,
            llm_dtype=llm_dtype.value if llm_dtype else None)
        if not paths and not bench and not (judge and resume):
            raise ConfigError("give audio folders, files or manifests, or --bench NAME (see `omni eval --help`)")
        from omni_cli.audio import check_output_dir
        from omni_cli.registry import require_device

        check_output_dir(out, "--out")
        require_device(device)
        items = ev.items_from_paths(paths) if paths else []
        if bench:
            from omni_cli.benches import load_bench

            with ui.err.status(f"preparing the {bench} bench (built once, then cached) ..."):
                items += load_bench(bench)
        items = items[:limit] if limit else items
        interrupted = False
        with ev.EvalRun(out, items, config, resume) as run:
            if run.skipped:
                ui.note(f"resuming: {run.skipped} of {len(items)} item(s) already done in {shown(out)}")
            try:
                with ui.err.status("loading models ..."):
                    run.start(workers, ray_address)
                with ui.progress() as bar:
                    task_id = bar.add_task("evaluating", total=len(run.tasks))
                    for rows in run.rows():
                        bar.advance(task_id)
                        for r in rows:
                            if r["error"]:
                                ui.failed(f"{r['id']} ({r['condition']}): {r['error']}", bar.console)
                if judge:
                    _judge_answers(out, judge, judge_url, device)
            except KeyboardInterrupt:
                interrupted = True
        summary = run.summary
        ui.err.print(ui.eval_table(*ev.table_rows(summary)))
        ui.note(f"results: {shown(out / ev.RESULTS)}; report: {shown(out / 'report.html')} (to listen to; report.md, summary.json, results.csv, plots beside it)")
        if interrupted:
            ui.error(f"interrupted: {summary['rows']} finished run(s) kept in {shown(out / ev.RESULTS)}; continue with --resume")
            raise typer.Exit(130)
        failed = sum(c["failed"] for c in summary["conditions"].values())
        if failed:
            ui.error(f"{failed} of {summary['rows']} item run(s) failed (reasons in results.jsonl and report.md)")
            raise typer.Exit(1)


def _judge_answers(out: Path, model: str, url: str | None, device: str) -> None:
    from omni_cli.evaluate import read_results
    from omni_cli.judge import load_judge_model, judge_run

    with ui.err.status(f"loading the judge {model} ..."):
        judge = load_judge_model(model, url, device)
    with ui.progress() as bar:
        task_id = bar.add_task("judging answers", total=None)
        for done, total in judge_run(out, judge, read_results(out)):
            bar.update(task_id, completed=done, total=total)


def main() -> None:
    """Console entry point: strips --debug from anywhere on the command line."""
    if "--debug" in sys.argv[1:]:
        cli_common.DEBUG = True  # where user_errors reads it, for the commands of every module
        sys.argv = [a for a in sys.argv if a != "--debug"]
    signal.signal(signal.SIGTERM, _terminate)
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: every thread's stack, for a hang
    app()


def _terminate(signum, frame) -> None:
    """SIGTERM stops a command as Ctrl-C does, so it keeps what Ctrl-C keeps."""
    raise KeyboardInterrupt
