"""The plugin host: hooks, COHERE_LOAD_PLUGINS, broken plugins, duplicate ids, `cohere plugins`.

Plugins are registered in fixtures and always unregistered (``plugins.reset()``), in the
style of simonw/llm's tests. Installed plugins are simulated with a throw-away
``*.dist-info`` folder on ``sys.path`` (a real entry point in group ``cohere``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from cohere import plugins
from cohere.cli import main
from cohere.errors import CohereError
from cohere.hookspecs import hookimpl
from cohere.modalities import Modality


def run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.fixture(autouse=True)
def clean(monkeypatch, tmp_path):
    """Only the default plugins and what a test adds; an empty store."""
    monkeypatch.setenv("COHERE_LOAD_PLUGINS", "")
    monkeypatch.delenv("COHERE_STRICT_PLUGINS", raising=False)
    monkeypatch.setenv("COHERE_HOME", str(tmp_path / "home"))
    plugins.reset()
    yield
    plugins.reset()


class Zeta(Modality):
    name = "zeta"
    input_forms = {"values": "plain values"}


class Alpha(Modality):
    name = "alpha"
    input_forms = {"values": "plain values"}


class ModalityPlugin:
    """A plugin object registering two modalities (out of order) and one expert."""

    def __init__(self, folder="/nowhere/experts/alpha_to_zeta"):
        self.folder = folder

    @hookimpl
    def register_modalities(self, register):
        register(Zeta())
        register(Alpha())

    @hookimpl
    def register_experts(self, register):
        register("alpha->zeta", self.folder)


@pytest.fixture
def with_plugin():
    """Register a plugin object for one test; always unregister it."""
    pm = plugins.plugin_manager()
    added = []

    def add(plugin, name):
        pm.register(plugin, name=name)
        plugins.modalities.cache_clear()
        added.append(name)
        return plugin

    yield add
    for name in added:
        if pm.has_plugin(name):
            pm.unregister(name=name)
    plugins.reset()


def test_builtins_are_a_default_plugin_and_items_are_sorted(with_plugin):
    assert plugins.modality_names() == ["cna", "rnaseq", "rppa", "wsi"]
    with_plugin(ModalityPlugin(), "test-modalities")
    assert plugins.modality_names() == ["alpha", "cna", "rnaseq", "rppa", "wsi", "zeta"]
    assert plugins.get_modality("zeta").name == "zeta"
    assert list(plugins.experts()) == ["alpha->zeta"]
    assert plugins.experts("cna") == {}
    assert plugins.owners("register_experts") == {"alpha->zeta": "test-modalities"}


def test_same_id_from_two_plugins_is_an_error_naming_both(with_plugin):
    with_plugin(ModalityPlugin(), "plugin-one")
    with_plugin(ModalityPlugin("/elsewhere"), "plugin-two")
    with pytest.raises(CohereError, match=r"modality 'alpha' is registered by 'plugin-one' and by 'plugin-two'"):
        plugins.modality_names()
    with pytest.raises(CohereError, match=r"expert 'alpha->zeta' is registered by 'plugin-one' and by 'plugin-two'"):
        plugins.experts()


def test_a_plugin_cannot_shadow_a_builtin(with_plugin):
    class Fake:
        @hookimpl
        def register_modalities(self, register):
            class CNA(Modality):
                name = "cna"
                input_forms = {"x": "x"}

            register(CNA())

    with_plugin(Fake(), "shadow")
    with pytest.raises(CohereError, match=r"'cna' is registered by 'cohere.modalities.builtin' and by 'shadow'"):
        plugins.get_modality("cna")


def test_a_raising_hook_or_invalid_registration_is_skipped_with_a_warning(with_plugin, capsys, monkeypatch):
    class Raises:
        @hookimpl
        def register_modalities(self, register):
            register(Alpha())
            raise RuntimeError("boom\nsecond line")

    class Invalid:
        @hookimpl
        def register_experts(self, register):
            register("not an id", "/x")

    with_plugin(Raises(), "raises")
    with_plugin(Invalid(), "invalid")
    assert plugins.modality_names() == ["cna", "rnaseq", "rppa", "wsi"]  # nothing of "raises" is kept
    assert plugins.experts() == {}
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line]
    assert len(lines) == 2
    assert lines[0].startswith("warning: skipping plugin 'raises'") and "RuntimeError: boom" in lines[0]
    assert "plugin 'invalid'" in lines[1] and "register_experts" in lines[1]
    monkeypatch.setenv("COHERE_STRICT_PLUGINS", "1")
    plugins.modalities.cache_clear()
    with pytest.raises(CohereError, match=r"plugin 'raises' \(raises\) failed in register_modalities: RuntimeError: boom"):
        plugins.modality_names()



@pytest.mark.parametrize("name", ["../../pwn", "/abs/dir", "CNA", "a.b", "cna\n", "multi", ""])
def test_registered_names_that_are_not_modality_names_are_skipped(with_plugin, capsys, monkeypatch, name):
    """A plugin's modality, encoder and expert ids name folders: the one rule of cohere.ids."""
    class Hostile:
        @hookimpl
        def register_modalities(self, register):
            register(type("Bad", (Modality,), {"name": name, "input_forms": {"x": "x"}})())

        @hookimpl
        def register_encoders(self, register):
            register(name, "/nowhere")

        @hookimpl
        def register_experts(self, register):
            register(f"rppa->{name}", "/nowhere")

    with_plugin(Hostile(), "hostile")
    assert plugins.modality_names() == ["cna", "rnaseq", "rppa", "wsi"]
    assert plugins.encoders() == {} and plugins.experts() == {}
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 3 and all(line.startswith("warning: skipping plugin 'hostile'") for line in lines)
    assert all(f"{name!r} is not a valid modality name" in line for line in lines)
    monkeypatch.setenv("COHERE_STRICT_PLUGINS", "1")
    with pytest.raises(CohereError, match=r"plugin 'hostile' .* registered encoder .* is not a valid modality name"):
        plugins.encoders()


# ---------------------------------------------------------------- installed (entry-point) plugins


def install(site, dist: str, module: str, source: str, version: str = "1.2.3") -> None:
    """A fake installed distribution with an entry point in group ``cohere``."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[cohere]\n{module.split('_', 1)[1]} = {module}\n")


GOOD = """
    import typer
    from cohere.hookspecs import hookimpl
    from cohere.modalities import Modality

    class Omega(Modality):
        name = "omega"
        input_forms = {"values": "plain values"}

    @hookimpl
    def register_modalities(register):
        register(Omega())

    @hookimpl
    def register_commands(app):
        @app.command("hello")
        def hello(name: str = "world"):
            '''Say hello (from a plugin).'''
            typer.echo(f"hello {name}")
"""

BROKEN = """
    raise ImportError("cannot import name 'gone' from 'somewhere'")
"""

TYPO = """
    from cohere.hookspecs import hookimpl

    @hookimpl
    def register_modality(register):
        pass
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    install(site, "cohere-good", "cohere_good", GOOD)
    install(site, "cohere-broken", "cohere_broken", BROKEN, "0.0.1")
    monkeypatch.syspath_prepend(str(site))
    yield site
    for m in ("cohere_good", "cohere_broken", "cohere_typo", "cohere_exits", "cohere_prints"):
        sys.modules.pop(m, None)


def test_load_plugins_env_is_read_when_plugins_load(site, monkeypatch, capsys):
    monkeypatch.setenv("COHERE_LOAD_PLUGINS", "")
    plugins.reset()
    assert "omega" not in plugins.modality_names()
    monkeypatch.setenv("COHERE_LOAD_PLUGINS", "cohere-good")
    assert "omega" not in plugins.modality_names()  # cached until reset(): read at load time
    plugins.reset()
    assert "omega" in plugins.modality_names()
    monkeypatch.setenv("COHERE_LOAD_PLUGINS", "cohere_good, Cohere.Good")  # names are normalised
    plugins.reset()
    assert "omega" in plugins.modality_names()
    assert capsys.readouterr().err == ""  # the broken one was not even tried


def test_a_load_plugins_name_matching_no_distribution_is_warned_about(site, monkeypatch, capsys):
    monkeypatch.setenv("COHERE_LOAD_PLUGINS", "cohere-good,nonexistent,cohere-gone")
    plugins.reset()
    assert "omega" in plugins.modality_names()  # the names that match still load
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("warning: COHERE_LOAD_PLUGINS names 'cohere-gone', which "
                                                   "matches no installed distribution")
    assert "'nonexistent'" in lines[1] and "(installed: cohere-broken, cohere-good" in lines[1]
    monkeypatch.setenv("COHERE_STRICT_PLUGINS", "1")
    plugins.reset()
    with pytest.raises(CohereError, match=r"COHERE_LOAD_PLUGINS names 'cohere-gone'.*correct the name"):
        plugins.modality_names()


def test_broken_plugin_is_skipped_with_one_line_naming_it(site, monkeypatch, capsys):
    monkeypatch.delenv("COHERE_LOAD_PLUGINS")  # unset: every installed plugin
    plugins.reset()
    names = plugins.modality_names()
    assert "omega" in names  # the good one still works
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "cohere-broken" in line]
    assert len(warnings) == 1 and err.count("\n") == 1
    assert "warning: skipping plugin 'cohere-broken' (broken = cohere_broken) failed to load: ImportError" in warnings[0]
    monkeypatch.setenv("COHERE_STRICT_PLUGINS", "1")
    plugins.reset()
    with pytest.raises(CohereError, match=r"plugin 'cohere-broken' .*failed to load.*COHERE_STRICT_PLUGINS"):
        plugins.modality_names()


def test_the_cli_survives_a_broken_plugin_and_lists_plugins(site, monkeypatch, capsys):
    monkeypatch.delenv("COHERE_LOAD_PLUGINS")
    plugins.reset()
    code, out, err = run(["plugins", "--json"], capsys)
    assert code == 0
    found = {p["name"]: p for p in json.loads(out)}
    assert found["cohere-good"]["version"] == "1.2.3"
    assert found["cohere-good"]["hooks"] == ["register_commands", "register_modalities"]
    assert found["cohere-broken"]["hooks"] == [] and "ImportError" in found["cohere-broken"]["error"]
    assert err.count("warning: skipping plugin 'cohere-broken'") == 1
    assert [p["name"] for p in json.loads(out)][:2] == ["cohere.modalities.builtin", "cohere.store"]
    assert found["cohere.store"]["builtin"] and not found["cohere-good"]["builtin"]
    code, out, _ = run(["plugins"], capsys)
    assert "cohere-good 1.2.3  register_commands, register_modalities" in out and "SKIPPED" in out


def test_plugins_lists_the_builtins_marked_as_built_in(capsys):
    code, out, _ = run(["plugins"], capsys)
    assert code == 0
    assert out.splitlines() == [
        "cohere.modalities.builtin 0.1.0  register_modalities  (built-in)",
        "cohere.store 0.1.0  register_encoders, register_experts  (built-in)",
        "no installed plugins (pip install a cohere plugin, e.g. plugins/cohere-mirna)"]


def test_register_commands_adds_a_command(site, monkeypatch, capsys):
    monkeypatch.setenv("COHERE_LOAD_PLUGINS", "cohere-good")
    plugins.reset()
    code, out, _ = run(["hello", "--name", "cohere"], capsys)
    assert code == 0 and out == "hello cohere\n"


def test_a_hook_with_a_typo_is_a_broken_plugin(site, monkeypatch, capsys):
    install(site, "cohere-typo", "cohere_typo", TYPO)
    monkeypatch.setenv("COHERE_LOAD_PLUGINS", "cohere-typo")
    plugins.reset()
    assert plugins.modality_names() == ["cna", "rnaseq", "rppa", "wsi"]
    err = capsys.readouterr().err
    assert "skipping plugin 'cohere-typo'" in err and "register_modality" in err


# ---------------------------------------------------------------- a plugin never takes the host down

EXITS = """
    import sys
    from cohere.hookspecs import hookimpl
    from cohere.modalities import Modality

    class Psi(Modality):
        name = "psi"
        input_forms = {{"values": "plain values"}}

    if {where!r} == "import":
        sys.exit(3)

    @hookimpl
    def {hook}({arg}):
        if {where!r} == "hook":
            {fail}
        {ok}
"""

HOOK_OK = {"register_modalities": "register(Psi())", "register_encoders": "register('psi', '/nowhere')",
           "register_experts": "register('psi->cna', '/nowhere')", "register_commands": "pass"}
FAILURES = {"sys.exit(3)": "SystemExit: 3", "raise SystemExit": "SystemExit", "raise ValueError('bad')": "ValueError: bad"}


def _exiting_plugin(site, monkeypatch, where, hook="register_modalities", fail="sys.exit(3)"):
    arg = "app" if hook == "register_commands" else "register"
    install(site, "cohere-exits", "cohere_exits", EXITS.format(where=where, hook=hook, arg=arg, fail=fail,
                                                               ok=HOOK_OK[hook]))
    monkeypatch.setenv("COHERE_LOAD_PLUGINS", "cohere-exits")
    plugins.reset()
    sys.modules.pop("cohere_exits", None)


@pytest.mark.parametrize("hook", sorted(HOOK_OK))
@pytest.mark.parametrize("fail", sorted(FAILURES))
def test_a_plugin_whose_hook_exits_or_raises_is_skipped_with_one_warning(site, monkeypatch, capsys, hook, fail):
    _exiting_plugin(site, monkeypatch, "hook", hook, fail)
    code, out, err = run(["plugins", "--json"], capsys)
    assert code == 0
    assert [p["name"] for p in json.loads(out)][-1] == "cohere-exits"
    assert plugins.modality_names() == ["cna", "rnaseq", "rppa", "wsi"]
    assert plugins.encoders() == {} and plugins.experts() == {}
    err += capsys.readouterr().err
    lines = [line for line in err.splitlines() if line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"warning: skipping plugin 'cohere-exits' (exits = cohere_exits) failed in {hook}: "
                               f"{FAILURES[fail]}")


def test_a_plugin_that_exits_at_import_is_skipped_and_every_command_still_works(site, monkeypatch, capsys):
    _exiting_plugin(site, monkeypatch, "import")
    code, out, err = run(["plugins", "--json"], capsys)
    assert code == 0
    assert {p["name"]: p for p in json.loads(out)}["cohere-exits"]["error"] == "failed to load: SystemExit: 3"
    assert err.splitlines() == ["warning: skipping plugin 'cohere-exits' (exits = cohere_exits) failed to load: "
                                "SystemExit: 3 (COHERE_STRICT_PLUGINS=1 makes this an error)"]
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "generate" in out


def test_keyboard_interrupt_in_a_plugin_still_stops_the_host(site, monkeypatch):
    _exiting_plugin(site, monkeypatch, "hook", fail="raise KeyboardInterrupt")
    with pytest.raises(KeyboardInterrupt):
        plugins.modality_names()


def test_sigterm_while_a_plugin_loads_still_stops_the_cli(site, monkeypatch):
    """The CLI turns SIGTERM into an exit (code 143); a plugin's own sys.exit() is caught, that is not."""
    install(site, "cohere-slow", "cohere_slow", "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    env = {**os.environ, "COHERE_LOAD_PLUGINS": "cohere-slow", "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-m", "cohere", "plugins"], capture_output=True, text=True, env=env)
    assert proc.returncode == 143 and proc.stdout == "" and "skipping plugin" not in proc.stderr


@pytest.mark.parametrize("where", ["import", "hook"])
def test_a_broken_plugin_in_strict_mode_is_one_line_from_the_cli(site, monkeypatch, capsys, where):
    _exiting_plugin(site, monkeypatch, where, "register_commands")
    monkeypatch.setenv("COHERE_STRICT_PLUGINS", "1")
    code, out, err = run(["plugins"], capsys)
    what = "failed to load" if where == "import" else "failed in register_commands"
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: plugin 'cohere-exits' (exits = cohere_exits) {what}: "
                                                    "SystemExit: 3; fix or uninstall it")


PRINTS = """
    print("at import")
    from cohere.hookspecs import hookimpl
    from cohere.modalities import Modality

    class Psi(Modality):
        name = "psi"
        input_forms = {"values": "plain values"}

    @hookimpl
    def register_modalities(register):
        print("in register_modalities")
        register(Psi())

    @hookimpl
    def register_commands(app):
        print("in register_commands")

        @app.command("psi")
        def psi():
            print("the command's own output")
"""


def test_a_plugin_printing_to_stdout_does_not_corrupt_json(site, monkeypatch, capsys):
    install(site, "cohere-prints", "cohere_prints", PRINTS)
    monkeypatch.setenv("COHERE_LOAD_PLUGINS", "cohere-prints")
    plugins.reset()
    code, out, err = run(["plugins", "--json"], capsys)
    assert code == 0 and [p["name"] for p in json.loads(out)][-1] == "cohere-prints"
    assert "at import" in err and "in register_commands" in err
    assert "psi" in plugins.modality_names()
    assert "in register_modalities" in capsys.readouterr().err
    code, out, _ = run(["psi"], capsys)  # the commands a plugin adds print to stdout as usual
    assert code == 0 and out == "the command's own output\n"
