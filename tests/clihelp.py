"""Run the CLI in-process as a user would: exit code, stdout and stderr."""

import pytest

from cohere.cli import main


def run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err
