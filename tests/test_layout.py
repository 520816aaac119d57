"""The package's shape: module sizes, type hints, no import cycle, README tables from the registry."""
import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tailtune"
README = Path(__file__).resolve().parents[1] / "README.md"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every tailtune module ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            targets = [f"{root}.{a.name}" if f"{root}.{a.name}" in modules else root for a in node.names]
        found |= {t for t in targets if t in modules and t != name}
    return found


def test_no_module_over_500_lines():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 500, {k: v for k, v in sizes.items() if v > 500}


def test_type_hints_on_most_functions():
    total = hinted = 0
    missing = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = [a for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                        if a.arg not in ("self", "cls")] + [a for a in (node.args.vararg, node.args.kwarg) if a]
                ok = all(a.annotation is not None for a in args) and (node.returns is not None or node.name == "__init__")
                total += 1
                hinted += ok
                if not ok:
                    missing.append(f"{path.name}:{node.name}")
    assert hinted / total >= 0.9, missing


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2
    for name in sorted(graph):
        if name not in state:
            visit(name)


@pytest.mark.parametrize("marker,make", [("presets", "preset_table"), ("axes", "axes_table")])
def test_readme_tables_come_from_the_registry(marker, make):
    import tailtune.config as config
    text = README.read_text()
    m = re.search(rf"<!-- {marker}:start.*?-->\n(.*?)\n<!-- {marker}:end -->", text, re.S)
    assert m, f"README has no <!-- {marker}:start --> ... <!-- {marker}:end --> block"
    assert m.group(1).strip() == getattr(config, make)().strip(), \
        f"the README's {marker} table is stale: run python scripts/update_readme_tables.py"


def test_option_names_are_unique_across_axes():
    import tailtune as tt
    owners: dict[str, str] = {}
    for axis, registry in tt.AXES.items():
        for entry in registry:
            for name in entry.option_names():
                assert owners.setdefault(name, axis) == axis, f"option {name!r} is declared on two axes"


def test_every_option_has_help_text():
    """`train --help` explains every option from the docstring under its field, inherited fields included (the
    cosine and MLP heads share their LayerNorm options from heads.base.LayerNormOptions)."""
    import dataclasses

    import tailtune as tt
    from tailtune.config import ClassifierConfig
    from tailtune.registry import field_docs
    missing = [f"{axis}={entry.name}: {name}" for axis, registry in tt.AXES.items() for entry in registry
               for name in entry.option_names() if not entry.option_docs().get(name)]
    docs = field_docs(ClassifierConfig)
    missing += [f"ClassifierConfig: {f.name}" for f in dataclasses.fields(ClassifierConfig) if not docs.get(f.name)]
    assert not missing, f"options without a docstring under their field: {missing}"
    assert tt.AXES["head"].get("cosine").option_docs()["layer_norm"].startswith("LayerNorm before the output layer")


def test_each_axis_help_names_every_entry():
    """The axes' help (ClassifierConfig's field docstrings) lists the entries in words; a new registry entry must
    appear there too, or `train --help` describes a smaller toolkit than the one registered."""
    import re

    import tailtune as tt
    from tailtune.config import ClassifierConfig
    from tailtune.registry import field_docs
    docs = field_docs(ClassifierConfig)
    for axis, registry in tt.AXES.items():
        words = set(re.findall(r"[\w-]+", docs[axis]))
        assert not set(registry.names()) - words, f"{axis}'s docstring does not name {set(registry.names()) - words}"


def test_public_names_are_not_shadowed_by_submodules():
    """Importing a submodule sets it as an attribute of the package: no public name may be a module's name
    (``tailtune/train.py`` once replaced the function ``tailtune.train``)."""
    import importlib
    import pkgutil
    import types

    import tailtune as tt
    for info in pkgutil.walk_packages(tt.__path__, "tailtune."):
        if info.name.count(".") == 1 and not info.name.endswith(("deploy", "__main__")):
            importlib.import_module(info.name)
    shadowed = [name for name in tt.__all__ if isinstance(getattr(tt, name), types.ModuleType)]
    assert not shadowed, f"public names that are submodules: {shadowed}"


def test_every_command_help_shows_every_default():
    """`tailtune COMMAND --help` says, for every option, its default (or that it is required): `train --help` above
    all, which the quality issue asked for, and every other command the same way (cli.HelpFormatter)."""
    from tailtune.cli import build_parser
    commands = build_parser()._subparsers._group_actions[0].choices
    assert "train" in commands
    silent = [f"{name} {action.option_strings[0]}" for name, command in commands.items()
              for help_of in [command.formatter_class(prog=command.prog)._get_help_string]
              for action in command._actions if action.option_strings and action.dest != "help"
              and not any(word in help_of(action) for word in ("default:", "(required)"))]
    assert not silent, f"--help gives no default for {silent}"
    leaked = [name for name, command in commands.items() if "SUPPRESS" in command.format_help()]
    assert not leaked, f"--help of {leaked} shows argparse's SUPPRESS marker as a default"


def test_every_option_a_command_line_names_is_one_of_its_command():
    """Options are written in full (cli_args.Parser refuses prefixes), so every `tailtune COMMAND ... --flag` in the
    README, in the package's messages and in the benchmark scripts must name an option of COMMAND itself."""
    from tailtune.cli import build_parser
    commands = build_parser()._subparsers._group_actions[0].choices
    options = {name: {s for a in c._actions for s in a.option_strings} | {"--debug"} for name, c in commands.items()}
    root = README.parent
    files = [README, *PACKAGE.rglob("*.py"), *(root / "benchmarks").rglob("*.sh"), *(root / "benchmarks").rglob("*.yaml")]
    checked, wrong = 0, []
    for path in files:
        for line in path.read_text().replace("\\\n", " ").splitlines():
            for m in re.finditer(r"tailtune ([a-z][a-z-]+)(?=\s)([^`'\"]*)", line):
                for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", m.group(2)) if m.group(1) in options else []:
                    checked += 1
                    if flag not in options[m.group(1)]:
                        wrong.append(f"{path.name}: tailtune {m.group(1)} ... {flag}")
    assert checked > 100 and not wrong, wrong
