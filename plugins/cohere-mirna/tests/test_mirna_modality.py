"""The plugin on its own: registration through the entry point, forms, checks, filter."""

import numpy as np
import pytest

from cohere import plugins
from cohere.errors import CohereError
from cohere_mirna import MiRNA


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch):
    monkeypatch.delenv("COHERE_LOAD_PLUGINS", raising=False)
    plugins.reset()
    yield
    plugins.reset()


def test_registered_through_the_entry_point():
    assert "mirna" in plugins.modality_names()
    assert isinstance(plugins.get_modality("mirna"), MiRNA)
    info = {p.name: p for p in plugins.plugin_info()}
    assert info["cohere-mirna"].hooks == ["register_modalities"]


def test_counts_become_log2_rpm_and_checks_name_the_form():
    m = MiRNA()
    counts = np.array([[10.0, 990.0], [0.0, 500.0]])
    out = m.transform(counts, "counts")
    assert np.allclose(out, np.log2(np.array([[1e4, 9.9e5], [0, 1e6]]) + 1))
    with pytest.raises(CohereError, match="set the input form to 'counts'"):
        m.check(counts, "log2_rpm")
    with pytest.raises(CohereError, match="negative values"):
        m.check(np.array([[-1.0, 2.0]]), "log2_rpm")
    keep = m.keep_features(np.array([[0.0, 5.0], [0.5, 6.0], [0.0, 7.0]]), "log2_rpm")
    assert keep.tolist() == [False, True]
