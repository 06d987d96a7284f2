"""The package's layer order (pyproject's import-linter contract) and no import cycles between modules."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_layer_contract_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlinter.cli import lint_imports

    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_no_import_cycles_between_modules() -> None:
    import grimp

    graph = grimp.build_graph("anyalign", cache_dir=None)  # imports inside functions and TYPE_CHECKING count too
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported == module or imported.startswith(module + ".") or module.startswith(imported + "."):
                continue  # itself (cli/main.py run as __main__) or a package and its own submodules (re-exports)
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None and all(not a.startswith(b + ".") and not b.startswith(a + ".")
                                        for a, b in zip(back, back[1:])):
                cycles.append(" -> ".join((module, *back)))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles))[:20])


def test_readme_layer_list_equals_the_contract() -> None:
    import re

    import tomllib

    layers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]["layers"]
    contract = [layer.replace("anyalign.", "") for layer in layers]
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"The layer order, top to bottom.*?```text\n(.*?)```", readme, re.S)
    assert block is not None, "README: the layer list (```text block after 'The layer order, top to bottom') is gone"
    assert block.group(1).splitlines() == contract
