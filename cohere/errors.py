"""The one exception type for user errors.

A ``CohereError`` carries a single line that says what was expected and how to fix it.
The CLI prints it without a traceback and exits non-zero; library users can catch it.
"""


class CohereError(ValueError):
    """A problem with the user's input, files or models (not a bug in cohere)."""
