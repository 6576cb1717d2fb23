"""The one exception type for user errors, and the one for a request to stop.

A ``CohereError`` carries a single line that says what was expected and how to fix it.
The CLI prints it without a traceback and exits non-zero; library users can catch it.
"""


class CohereError(ValueError):
    """A problem with the user's input, files or models (not a bug in cohere)."""


class Interrupted(SystemExit):
    """The process was asked to stop (SIGTERM): it ends like Ctrl-C, ``finally`` blocks run.

    Never swallowed, not even where a plugin's own ``sys.exit()`` is caught.
    """
