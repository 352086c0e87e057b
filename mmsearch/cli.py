"""The `mmsearch` command. The only place that configures logging.

Each area's subcommands live in `mmsearch/commands/<area>.py` and expose
`register(subparsers)`; handlers return an exit code. Conventions: `--help`
and `--version` everywhere, progress bars on stderr by default
(`--no-progress` turns them off), `--json` for machine output on stdout,
exit 0 on success, 1 on an error the user can fix (message on stderr),
2 on bad usage, 130 when interrupted.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

from ._version import __version__
from .errors import MMSearchError, UsageError

COMMAND_MODULES = ("bench", "datasets", "demo", "encode", "eval", "index", "search", "serve", "tasks", "train")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", action="version", version=f"mmsearch {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")


class _Parser(argparse.ArgumentParser):
    """Every subcommand gets --version/--verbose/--quiet."""

    def add_subparsers(self, **kwargs):
        kwargs.setdefault("parser_class", _Parser)
        return super().add_subparsers(**kwargs)

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        _add_common(self)
        self.set_defaults(_parser=self)  # the deepest subcommand's parser reports its own usage errors


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = _Parser(prog="mmsearch", description="Multimodal vector search with VLM2Vec embeddings.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"mmsearch.commands.{name}").register(sub)
    return parser


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose < 2:  # transformers is chatty about config defaults at INFO/WARNING
        logging.getLogger("transformers").setLevel(max(level, logging.ERROR))
        logging.getLogger("faiss.loader").setLevel(max(level, logging.WARNING))  # which CPU build it tried
        # our own progress bars say what is happening; hide the hub's per-file ones
        # (read when huggingface_hub is first imported, which happens after this)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: Optional[List[str]] = None) -> int:
    import time

    started = time.perf_counter()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand that was given them, with its own usage
        args._parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return 2
    _configure_logging(args.verbose, args.quiet)
    prog = args._parser.prog
    args._started = started  # for commands that say where their time went
    try:
        code = int(args.handler(args) or 0)
        if argv is None and getattr(args, "exit_fast", False):
            _exit_now(code)
        return code
    except UsageError as e:
        args._parser.print_usage(sys.stderr)
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except MMSearchError as e:
        if args.debug:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mmsearch ... | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    except Exception as e:  # a failure we did not foresee: one line, the traceback with --debug
        if args.debug:
            raise
        print(f"{prog}: error: {_describe(e)} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


def _exit_now(code: int) -> None:
    """End the process without tearing down torch and transformers' modules (0.7 s here): for
    read-only commands run as the program (`exit_fast` set), once their output is flushed."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code)


def _describe(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
