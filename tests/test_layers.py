"""House rules that keep the layers honest (issue: one package per concept, honest layers)."""

import ast
import inspect
from pathlib import Path

import scdm

PACKAGE = Path(scdm.__file__).parent


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                offenders += [f"{path.relative_to(PACKAGE)}:{node.lineno} {alias.name}"
                              for alias in node.names
                              if alias.name.startswith("_") and alias.name != "__version__"]
    assert not offenders, offenders


def test_engines_know_nothing_of_anndata():
    engines = ["store.py", "masks.py", "ensemble.py", "evaluation.py", "clustering.py",
               "composition.py", "cleaning.py", "io.py", "_memmap.py",
               *(f"regression/{p.name}" for p in (PACKAGE / "regression").glob("*.py"))]
    for name in engines:
        tree = ast.parse((PACKAGE / name).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module or "" for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom)}
        assert not any(m.split(".")[0] in ("anndata", "scanpy") or m.startswith("tl")
                       or m.startswith(".tl") for m in imported), (name, imported)


def test_public_tl_functions_take_at_most_20_parameters():
    too_many = {name: len(inspect.signature(func).parameters)
                for name, func in vars(scdm.tl).items()
                if inspect.isfunction(func) and not name.startswith("_")
                and len(inspect.signature(func).parameters) > 20}
    assert not too_many, too_many


def test_plots_read_results_through_the_accessor_layer():
    """``pl`` reads what ``tl`` wrote through ``scdm.get``, never ``tl``'s private modules; the
    helpers plots share are ``pl/_utils``, not another plot's module."""
    offenders = []
    for path, tree in _modules():
        if path.relative_to(PACKAGE).parts[0] != "pl":
            continue
        offenders += [f"{path.name}:{node.lineno} {node.module}" for node in ast.walk(tree)
                      if isinstance(node, ast.ImportFrom) and node.module
                      and node.module.startswith("tl.") and node.level == 2]
        if path.name != "__init__.py":
            offenders += [f"{path.name}:{node.lineno} {node.module}" for node in ast.walk(tree)
                          if isinstance(node, ast.ImportFrom) and node.level == 1
                          and node.module not in (None, "_utils")]
    assert not offenders, offenders
    assert scdm.get.subgroup_key("trak") == "trak_subgroup"


def test_shared_parameter_docs_are_filled_in():
    import re

    import pytest

    from scdm._docs import doc_params

    for name, func in [*vars(scdm.tl).items(), *vars(scdm.pl).items()]:
        if inspect.isfunction(func) and func.__doc__:
            assert not re.search(r"^\s*\{\w+\}\s*$", func.__doc__, re.M), name
    # the plots describe show / save / ax / return_fig once (one snippet)
    for name in ("embedding", "influencers", "similarity", "path", "lds", "validation",
                 "markers", "composition", "reproducibility", "label_issues", "debias"):
        assert "Return the Figure instead of the Axes." in getattr(scdm.pl, name).__doc__, name
    assert "stratify_key" in scdm.tl.trak.__doc__ and "stratify_key" in scdm.tl.datamodels.__doc__

    def f():
        """Doc.

        {no_such_snippet}
        """

    with pytest.raises(KeyError, match="no_such_snippet"):
        doc_params(f)


def test_the_cli_only_adapts():
    """One small module per subcommand, none reaching into ``tl``'s private modules: the CLI
    calls the public tools and reads their defaults from the signatures."""
    cli = PACKAGE / "cli"
    assert {p.stem for p in cli.glob("*.py")} >= {"run", "store", "train", "worker", "fit",
                                                  "status"}
    too_long = {p.name: n for p in cli.glob("*.py")
                if (n := len(p.read_text().splitlines())) > 250}
    assert not too_long, too_long
    private = []
    for path, tree in _modules():
        if path.parent != cli:
            continue
        for node in ast.walk(tree):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            private += [f"{path.name}:{node.lineno} {name}" for name in names
                        if any(part.startswith("_") for part in name.split(".")[1:])
                        and "tl" in name.split(".")]
    assert not private, private
