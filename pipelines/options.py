"""Command lines of the Beam pipelines: strict application flags, Beam and runner flags passed through.

Why not `PipelineOptions` subclasses: Beam adds the flags of *every* imported subclass to every options parse
(`PipelineOptions.__subclasses__()` in `get_all_options`), so `bioserc label` and `bioserc bios` declaring `--format`
or `--model` would collide, and positionals (INPUT...) cannot be declared there at all. Instead each command keeps
its own argparse parser, and `parse_pipeline_args` adds every flag Beam's registered options know (as hidden,
verbatim pass-through flags) before parsing strictly: a typo or an unknown value is a usage error (exit 2) before
anything is read or written, with a "did you mean" for near misses.

The flag blocks two commands share are defined once here: the bio LLM's (`add_bio_llm_args`: `bioserc bios --X` is
`bioserc label --bio-X`) with the OpenAI-compatible server's (`add_server_args`), and `backend_options` reads them
back; the input flags are the core's `bioserc.flags.add_input_args`.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
from collections.abc import Sequence
from typing import Any

from bioserc.bios.backends import BACKENDS
from bioserc.flags import at_least, json_object


BEAM_ARGS = "_beam_args"  # namespace attribute collecting the pass-through flags while parsing
PATH_FLAGS = ("inputs", "output", "model", "bios", "cache", "bio_cache")  # attributes whose URI scheme is checked
INSTALL_HINTS = {
    "gs": "pip install 'bioserc[gcp]'",
    "s3": "pip install 'apache-beam[aws]'",
    "azfs": "pip install 'apache-beam[azure]'",
}
THREADED = ("transformers", "onnx")  # in-process CPU runtimes; a server or TensorRT-LLM picks its own threads
EPILOG = """\
Application flags are kebab-case; their snake_case spelling is accepted too (--conversations_per_batch =
--conversations-per-batch). Every other flag must be a Beam or runner flag (snake_case, as Beam spells them) and
is passed to Beam, e.g. --runner, --direct_num_workers, --direct_running_mode, --project, --region,
--temp_location, --sdk_container_image, --extra_package dist/bioserc-*.whl, --dask_client_address (with --runner
apache_beam.runners.dask.dask_runner.DaskRunner). Anything else is refused (exit 2) before any input is read."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the module docstring's layout and appends each flag's default, unless its help already states it
    (argparse's ArgumentDefaultsHelpFormatter would print "(default: None)" after "(default: OUTPUT/cache)")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "default" in text.lower()
            or action.default is argparse.SUPPRESS
            or not action.option_strings
            or action.required
        ):
            return text
        value = action.default
        shown = "off" if value is False else "none" if value in (None, "", {}, []) else str(value)
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()


def pipeline_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The parser every pipeline command starts from: no abbreviations (a prefix must not pass as a flag)."""
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
        allow_abbrev=False,
        usage=f"{prog} INPUT... -o DIR [options] [Beam/runner flags]  (see --help)",
    )


class _BeamFlag(argparse.Action):
    """Keeps a Beam/runner flag and its value verbatim, in command-line order, for `PipelineOptions`."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = values if isinstance(values, list) else [] if values is None else [values]
        setattr(namespace, BEAM_ARGS, [*getattr(namespace, BEAM_ARGS, []), option_string, *given])


def parse_pipeline_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """(application args, Beam args) of a pipeline command line; a usage error (exit 2) for anything unknown.

    Beam's flags are the ones its imported `PipelineOptions` subclasses declare, plus those of the module a dotted
    `--runner` names (imported first, as Beam would). Input/output paths whose URI scheme has no Beam filesystem here
    (gs:// without the gcp extra) are refused with what to install.
    """
    argv = list(argv)
    _import_runner(parser, argv)
    beam = _beam_parser()
    combined = argparse.ArgumentParser(
        prog=parser.prog,
        usage=parser.usage,
        description=parser.description,
        epilog=parser.epilog,
        formatter_class=parser.formatter_class,
        parents=[parser],
        add_help=False,
        allow_abbrev=False,
    )
    ours = _option_strings(parser)
    for action in beam._actions:
        options = [o for o in action.option_strings if o not in ours]
        if options:  # Beam's -h/--help is ours already
            combined.add_argument(
                *options,
                action=_BeamFlag,
                nargs=action.nargs,
                const=None,
                dest=argparse.SUPPRESS,
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )
    args, unknown = combined.parse_known_intermixed_args(_kebab(argv, ours))
    if unknown:
        combined.error(_unknown_message(unknown, ours, _option_strings(beam)))
    beam_args = vars(args).pop(BEAM_ARGS, [])
    _check_filesystems(combined, args)
    return args, beam_args


def _beam_parser() -> argparse.ArgumentParser:
    """The parser Beam itself builds from every registered `PipelineOptions` subclass (public hook, no copy)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    built: list[argparse.ArgumentParser] = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=built.append)
    return built[0]


def _import_runner(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """A runner given by module path (the Dask runner) registers its options on import: import it now."""
    pre = argparse.ArgumentParser(prog=parser.prog, add_help=False, allow_abbrev=False)
    pre.add_argument("--runner")
    runner = pre.parse_known_args(argv)[0].runner
    if runner and "." in runner:
        try:
            importlib.import_module(runner.rpartition(".")[0])
        except ImportError as err:
            parser.error(f"--runner {runner}: cannot import it ({err})")


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {o for action in parser._actions for o in action.option_strings}


def _kebab(argv: list[str], ours: set[str]) -> list[str]:
    """--skip_existing -> --skip-existing for application flags (Beam's own flags are snake_case)."""
    out = []
    for i, token in enumerate(argv):
        if token == "--":
            return out + argv[i:]
        name, eq, value = token.partition("=")
        kebab = name.replace("_", "-")
        out.append(kebab + eq + value if name.startswith("--") and name not in ours and kebab in ours else token)
    return out


def _unknown_message(unknown: list[str], ours: set[str], beams: set[str]) -> str:
    parts = []
    for token in unknown:
        name = token.partition("=")[0]
        kebab = name.replace("_", "-")
        close = (
            (
                [o for o in sorted(ours) if o.startswith(kebab)]  # a prefix: abbreviations are not accepted
                or difflib.get_close_matches(kebab, sorted(ours), n=1)
                or difflib.get_close_matches(name, sorted(beams), n=1)
            )
            if name.startswith("--")
            else []
        )
        parts.append(f"{token} (did you mean {close[0]}?)" if close else token)
    return f"unrecognized argument{'s' if len(parts) > 1 else ''}: {', '.join(parts)}"


def _check_filesystems(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from apache_beam.io.filesystems import FileSystems

    for dest in PATH_FLAGS:
        value = getattr(args, dest, None)
        for path in value if isinstance(value, list) else [value]:
            scheme = FileSystems.get_scheme(path) if isinstance(path, str) else None
            if scheme is None:
                continue
            try:
                FileSystems.get_filesystem(path)
            except ValueError:
                hint = INSTALL_HINTS.get(scheme, "Beam has no filesystem for it")
                parser.error(
                    f"{_flag_name(parser, dest)} {path}: {scheme}:// is not readable with this install: {hint}"
                )


def _flag_name(parser: argparse.ArgumentParser, dest: str) -> str:
    action = next(a for a in parser._actions if a.dest == dest)
    return action.option_strings[-1] if action.option_strings else str(action.metavar or dest)


def add_bio_llm_args(g: argparse._ArgumentGroup, prefix: str = "") -> None:
    """The bio LLM's flags: `bioserc bios` adds --backend, --model, ...; `bioserc label` (prefix "bio-") --bio-backend,
    --bio-model, ..., each saying which `bioserc bios` flag it is."""
    flag, see = f"--{prefix}", " (bios --{})" if prefix else ""
    g.add_argument(
        flag + "backend", default="transformers", choices=BACKENDS, help="LLM runtime" + see.format("backend")
    )
    g.add_argument(
        flag + "model",
        default="smollm2",
        help="embedded name (smollm2), a local HF/ONNX folder, or the "
        "served model name for openai" + see.format("model"),
    )
    add_server_args(g, prefix)
    g.add_argument(
        flag + "words", type=at_least(1), default=60, help="word limit asked for in the prompt" + see.format("words")
    )
    g.add_argument(
        flag + "max-new-tokens",
        type=at_least(1),
        default=96,
        help="generation limit per bio" + see.format("max-new-tokens"),
    )
    g.add_argument(
        flag + "batch-size",
        type=at_least(1),
        default=32,
        metavar="N",
        help="prompts per LLM generate call (32: 5.1x one-at-a-time on MELD, docs/BENCHMARKS.md)"
        + see.format("batch-size"),
    )
    g.add_argument(
        flag + "threads",
        type=at_least(0),
        default=0,
        metavar="N",
        help="CPU threads of the LLM per worker process (default 0: automatic)" + see.format("threads"),
    )
    g.add_argument(
        flag + "cache",
        metavar="DIR",
        help="bio cache directory shared across runs; 'none' disables it "
        "(default: OUTPUT/cache)" + see.format("cache"),
    )


def add_server_args(g: argparse._ArgumentGroup, prefix: str = "") -> None:
    """The openai backend's flags: `bioserc bios` adds --base-url, ...; `bioserc label` --bio-base-url, ..."""
    flag, see = f"--{prefix}", " (bios --{})" if prefix else ""
    g.add_argument(
        flag + "base-url",
        metavar="URL",
        help="OpenAI-compatible server for the openai backend: vLLM, SGLang, trtllm-serve" + see.format("base-url"),
    )
    g.add_argument(
        flag + "endpoint",
        default="chat",
        choices=("chat", "completions"),
        help="openai: chat (/v1/chat/completions; vLLM, SGLang) or completions (/v1/completions, the "
        "prompt rendered here with the --tokenizer folder's chat template; trtllm-serve)" + see.format("endpoint"),
    )
    g.add_argument(
        flag + "tokenizer",
        metavar="DIR",
        help="openai: the served model's local folder, for exact token counts; needed by --endpoint "
        "completions" + see.format("tokenizer"),
    )
    g.add_argument(
        flag + "max-context",
        type=at_least(64),
        default=8192,
        metavar="N",
        help="openai: the served model's context length in tokens" + see.format("max-context"),
    )
    g.add_argument(
        flag + "request-timeout",
        type=at_least(0.1, float),
        default=300.0,
        metavar="S",
        help="openai: seconds one request may take before it is retried" + see.format("request-timeout"),
    )
    g.add_argument(
        flag + "retries",
        type=at_least(0),
        default=5,
        metavar="N",
        help="openai: retries of a request after connection errors, timeouts, 429 and 5xx (exponential "
        "backoff, Retry-After honoured; other 4xx fail that bio alone)" + see.format("retries"),
    )
    g.add_argument(
        flag + "concurrency",
        type=at_least(1),
        default=32,
        metavar="N",
        help="openai: requests in flight per worker process" + see.format("concurrency"),
    )
    g.add_argument(
        flag + "api-key-env",
        metavar="VAR",
        help="openai: environment variable holding the API key (default: OPENAI_API_KEY when set)"
        + see.format("api-key-env"),
    )
    g.add_argument(
        flag + "extra-body",
        type=json_object,
        metavar="JSON",
        help="openai: server-specific fields added to every request, e.g. "
        "'{\"repetition_penalty\": 1.1}' for vLLM/SGLang" + see.format("extra-body"),
    )


def backend_options(args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """`make_backend`'s options from `bioserc bios` flags, or `bioserc label` ones with prefix "bio_"."""

    def get(name: str) -> Any:
        return getattr(args, prefix + name)

    if get("backend") in THREADED:
        return {"batch_size": get("batch_size"), "threads": get("threads") or None}
    if get("backend") != "openai":
        return {"batch_size": get("batch_size")}
    flag = "--" + prefix.replace("_", "-")
    if not get("base_url"):
        raise SystemExit(f"{flag}backend openai needs {flag}base-url (e.g. http://localhost:8000)")
    if get("endpoint") == "completions" and not get("tokenizer"):
        raise SystemExit(f"{flag}endpoint completions needs {flag}tokenizer DIR (the served model's local folder)")
    return {
        "base_url": get("base_url"),
        "endpoint": get("endpoint"),
        "tokenizer_path": get("tokenizer"),
        "max_context": get("max_context"),
        "timeout_s": get("request_timeout"),
        "max_retries": get("retries"),
        "concurrency": get("concurrency"),
        "api_key_env": get("api_key_env"),
        "extra_body": get("extra_body"),
    }
