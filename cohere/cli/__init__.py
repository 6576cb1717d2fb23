"""The ``cohere`` command line, built in ``make_app()`` (no import-time side effects)."""

from __future__ import annotations

import signal
import sys
import threading

import typer

from ..errors import CohereError

HELP = """Generate a patient's missing data modality from the modalities they have.

Worked example (the embedded simulated cohort, then your own):

\b
  cohere demo
  cohere encoders train --all --cohort my_cohort/ --models models/
  cohere encode --models models/ --cohort my_cohort/ --out latents.parquet
"""


def make_app() -> typer.Typer:
    from . import demo, encoders, evaluate, experts, generate, plugins, store

    app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False,
                      pretty_exceptions_enable=False, rich_markup_mode=None)
    encoders.register(app)
    experts.register(app)
    generate.register(app)
    demo.register(app)
    store.register(app)  # add/list/info/remove/push in the encoders and experts groups
    evaluate.register(app)
    plugins.register(app)  # `cohere plugins` + every plugin's register_commands(app); keep last
    return app


def exit_on_sigterm() -> None:
    """Let SIGTERM (``timeout``, a job scheduler) end a command the way Ctrl-C does: ``finally``
    blocks run, so an interrupted atomic write leaves no temporary file. Exit code 143."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors are one line on stderr and exit code 1."""
    exit_on_sigterm()
    app = make_app()
    try:
        rc = app(args=argv, standalone_mode=False, prog_name="cohere")
    except CohereError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)
