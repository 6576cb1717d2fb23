"""The one rule for modality names and model ids (cohere.ids), wherever a name comes from.

Where names come from (CLI, config.json, a Hub repo, the registry, a plugin) is tested in
test_store.py, test_hub.py and test_plugins.py; this file is the rule itself.
"""

from __future__ import annotations

import pytest

from cohere import hub, ids
from cohere.errors import CohereError

BAD_NAMES = ["", "CNA", "Cna", " cna", "cna ", "cna\n", "1cna", "_cna", "..", ".", "../x", "/abs", "a/b", "a\\b",
             "a.b", "a-b", "cnä", "a" * 65, "multi", None, 3, ["cna"]]
BAD_IDS = ["../../pwn->cna", "/abs/dir->data", "rnaseq->../cna", "rnaseq->/tmp/x", "..->cna", "RNASEQ->cna",
           "rnaseq -> cna", "rnaseq->cna\n", "a->b->c", "cna", "->cna", "cna->", "cna->cna", "cna->multi",
           "multi->multi", "rnaseq_to_cna", None]


@pytest.mark.parametrize("name", ["cna", "rnaseq", "rppa", "wsi", "mirna_v2", "a", "a" * 64])
def test_valid_modality_names(name):
    assert ids.modality(name) == name and ids.is_modality(name)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_modality_names_are_one_line_errors_that_say_the_rule(name):
    with pytest.raises(CohereError, match=r"is not a valid modality name: expected a lowercase letter, then "
                                          r"lowercase letters, digits or _ \(at most 64 characters\)") as e:
        ids.modality(name, "encoder")
    assert "\n" not in str(e.value).replace(repr(name), "") and str(e.value).startswith(f"encoder {name!r}")
    assert not ids.is_modality(name)


def test_the_error_suggests_the_fix():
    with pytest.raises(CohereError, match=r"did you mean 'cna'\?"):
        ids.modality(" CNA")
    with pytest.raises(CohereError, match=r"'multi' is reserved for multi-condition model ids"):
        ids.modality("multi")


@pytest.mark.parametrize("text,parsed", [("rnaseq->cna", ("rnaseq", "cna")), ("multi->cna", ("multi", "cna")),
                                         ("mirna_v2->rppa", ("mirna_v2", "rppa"))])
def test_valid_model_ids(text, parsed):
    assert ids.parse_id(text) == parsed and ids.model_id(text) == text


@pytest.mark.parametrize("text", BAD_IDS)
def test_invalid_model_ids(text):
    with pytest.raises(CohereError, match=r"^expert id .*(expected SOURCE->TARGET|is not a valid modality name|"
                                          r"must differ)"):
        ids.model_id(text, "expert id")


def test_a_traversal_id_names_the_bad_part():
    with pytest.raises(CohereError, match=r"model id '\.\./\.\./pwn->cna': source '\.\./\.\./pwn' is not a valid "
                                          r"modality name"):
        ids.parse_id("../../pwn->cna")
    with pytest.raises(CohereError, match=r"model id 'rnaseq->/abs/dir': target '/abs/dir' is not a valid"):
        ids.parse_id("rnaseq->/abs/dir")


def test_the_registry_schema_states_the_same_rule():
    schema = hub.schema()
    assert schema["$defs"]["modality"]["pattern"] == f"^{ids.PATTERN}$"
    assert list(schema["$defs"]["entry"]["properties"]["encoders"]["patternProperties"]) == [f"^{ids.PATTERN}$"]
