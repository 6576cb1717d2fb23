"""Modality names and model ids: the one rule for every name that can become part of a path.

A modality name is a lowercase letter followed by lowercase letters, digits or ``_``, at
most 64 characters (``rnaseq``, ``cna``, ``mirna_v2``); ``multi`` is reserved. A model id
is ``SOURCE->TARGET`` (an expert) or ``multi->TARGET`` (a multi-condition model) of
modality names. Names are taken exactly as written (no case folding: ``CNA`` and ``cna``
would be one folder on a case-insensitive file system).

Every name that reaches the file system goes through :func:`modality` or :func:`parse_id`,
wherever it comes from: a command-line argument, a config.json (read_config), a Hub
repository's config, the registry index, a plugin's registrations.

    modality("rnaseq")            # "rnaseq"
    parse_id("rnaseq->cna")       # ("rnaseq", "cna")
    parse_id("../../x->cna")      # CohereError: ... source '../../x' is not a valid modality name ...
"""

from __future__ import annotations

import re

from .errors import CohereError

ARROW = "->"
MULTI = "multi"  # the source of a multi-condition model id; not a modality name
MAX_LENGTH = 64
PATTERN = "[a-z][a-z0-9_]*"  # the registry schema's $defs.modality says the same (tested)
_NAME = re.compile(PATTERN)
RULE = (f"expected a lowercase letter, then lowercase letters, digits or _ (at most {MAX_LENGTH} "
        "characters), e.g. rnaseq")


def is_modality(name) -> bool:
    return isinstance(name, str) and len(name) <= MAX_LENGTH and bool(_NAME.fullmatch(name)) and name != MULTI


def modality(name, what: str = "modality") -> str:
    """``name`` if it is a valid modality name, else a ``CohereError`` that says the rule."""
    if is_modality(name):
        return name
    if name == MULTI:
        hint = f"; {MULTI!r} is reserved for multi-condition model ids ({MULTI}->TARGET)"
    elif isinstance(name, str) and is_modality(name.strip().lower()):
        hint = f"; did you mean {name.strip().lower()!r}?"
    else:
        hint = ""
    raise CohereError(f"{what} {name!r} is not a valid modality name: {RULE}{hint}")


def parse_id(model_id, what: str = "model id") -> tuple[str, str]:
    """``"rnaseq->cna"`` -> ``("rnaseq", "cna")``; ``"multi->cna"`` -> ``("multi", "cna")``."""
    parts = model_id.split(ARROW) if isinstance(model_id, str) else []
    if len(parts) != 2:
        raise CohereError(f"{what} {model_id!r}: expected SOURCE->TARGET (e.g. rnaseq->cna) or "
                          f"{MULTI}->TARGET")
    source, target = parts
    if source != MULTI:
        modality(source, f"{what} {model_id!r}: source")
    modality(target, f"{what} {model_id!r}: target")
    if source == target:
        raise CohereError(f"{what} {model_id!r}: source and target must differ")
    return source, target


def model_id(text, what: str = "model id") -> str:
    """``text`` if it is a valid model id (see :func:`parse_id`)."""
    parse_id(text, what)
    return text
