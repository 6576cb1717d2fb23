"""The ``cohere`` command line, built in ``make_app()`` (no import-time side effects).

Command modules import torch, pandas and scikit-learn inside their command functions, so
that building the app (``--help``, ``plugins``, ``experts list``) starts in well under a second.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading

import typer

from ..errors import CohereError, Interrupted

HELP = """Generate a patient's missing data modality from the modalities they have.

Worked example (the embedded simulated cohort, then your own):

\b
  cohere demo
  cohere encoders train --all --cohort my_cohort/ --models models/
  cohere encode --models models/ --cohort my_cohort/ --out latents.parquet
"""


def make_app() -> typer.Typer:
    from . import complete, demo, encoders, evaluate, experts, generate, plugins, store

    app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False,
                      pretty_exceptions_enable=False, rich_markup_mode=None)
    encoders.register(app)
    experts.register(app)
    generate.register(app)
    complete.register(app)
    demo.register(app)
    store.register(app)  # add/list/info/remove/push in the encoders and experts groups
    evaluate.register(app)
    plugins.register(app)  # `cohere plugins` + every plugin's register_commands(app); keep last
    return app


def exit_on_sigterm() -> None:
    """Let SIGTERM (``timeout``, a job scheduler) end a command the way Ctrl-C does: ``finally``
    blocks run, so an interrupted atomic write leaves no temporary file. Exit code 143."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupted)


def _interrupted(signum, frame):
    raise Interrupted(128 + signum)


def click_exceptions() -> tuple[type[Exception], ...]:
    """``ClickException`` of the click that typer runs on: the copy bundled in typer
    (``typer._click``, typer >= 0.2x) and/or the separate ``click`` package (older typer)."""
    found = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(name).ClickException)
        except ImportError:
            continue
    return tuple(found)


def main(argv: list[str] | None = None) -> None:
    """Console entry point, the one error path of the CLI.

    Usage errors (missing or unknown option, bad value, unknown command) print click's short
    usage message and exit 2; user errors (``CohereError``, also from loading plugins while
    the app is built) print one line on stderr and exit 1. Anything else is a bug: traceback.
    """
    exit_on_sigterm()
    try:
        app = make_app()
        rc = app(args=argv, standalone_mode=False, prog_name="cohere")
    except CohereError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        if isinstance(e, click_exceptions()):
            e.show()
            sys.exit(e.exit_code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)
