"""docs/DESIGN.md, the design map: what it names exists, and the README points to it."""

import ast
import importlib
import os
import re

import pytest

from tests.scripts import ROOT

DESIGN = os.path.join(ROOT, "docs", "DESIGN.md")
PACKAGES = ("data", "tokenizers", "layers", "encoders", "models", "losses", "trainers",
            "distribute", "callbacks", "eval", "training", "export", "serving")  # fmt: skip
# Names the contracts use that are Python's or a parameter's, not the library's.
NOT_OURS = {"ValueError", "gather_fn"}


def _design():
    with open(DESIGN, encoding="utf-8") as f:
        return f.read()


def _section(text, title):
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_readme_links_the_design_map():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        assert "(docs/DESIGN.md)" in f.read()


def test_every_folder_in_the_layout_tables_exists():
    text = _design()
    layout = _section(text, "The lifecycle, and where it lives")
    inside = layout.index("Inside `mm_keras/`")
    top = re.findall(r"^\| `([a-z_]+)/` \|", layout[:inside], re.M)
    packages = re.findall(r"^\| `([a-z_]+)/` \|", layout[inside:], re.M)
    assert top and set(packages) == set(PACKAGES), packages
    for folder in top:
        assert os.path.isdir(os.path.join(ROOT, folder)), folder
    for package in packages:
        assert os.path.isfile(os.path.join(ROOT, "mm_keras", package, "__init__.py")), package


def _library_names():
    """Every class, function and constant defined at the top of an mm_keras module."""
    names = set()
    for folder, _, files in os.walk(os.path.join(ROOT, "mm_keras")):
        for file in files:
            if file.endswith(".py"):
                with open(os.path.join(folder, file), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                for node in tree.body:
                    if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                        names.add(node.name)
                    elif isinstance(node, ast.Assign):
                        names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_every_class_and_function_the_contracts_name_exists():
    contracts = _section(_design(), "Contracts")
    named = set(re.findall(r"`(?:[a-z_]+\.)*([A-Z][A-Za-z0-9_]+)[`(]", contracts))
    named |= set(re.findall(r"`(?:[a-z_]+\.)*([a-z_][a-z0-9_]*)\(", contracts))
    assert len(named) > 15, named
    missing = sorted(named - NOT_OURS - _library_names())
    assert not missing, f"DESIGN.md's contracts name what the code lacks: {missing}"


@pytest.mark.parametrize("module", re.findall(r"`(mm_keras(?:\.[A-Za-z_]+)+)`", _design()))
def test_every_dotted_name_resolves(module):
    parts = module.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            target = getattr(target, attribute)
        return
    pytest.fail(f"{module} does not resolve")


def test_no_recipe_imports_another():
    recipes = os.path.join(ROOT, "recipes")
    files = sorted(f for f in os.listdir(recipes) if f.endswith(".py"))
    # A script's own folder is on its path: `import clip` would import the recipe too.
    names = {"recipes"} | {f[: -len(".py")] for f in files}
    for file in files:
        with open(os.path.join(recipes, file), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                imported = [node.module or ""]
            elif isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            else:
                continue
            assert not {name.split(".")[0] for name in imported} & names, (file, imported)
