"""The public API (hpsearch/__init__.py): every name resolves, lazily, and is typed for users' type checkers."""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import tomllib

import pytest

import hpsearch

from helpers import ROOT


@pytest.mark.parametrize("name", hpsearch.__all__)
def test_each_public_name_is_its_modules_object(name):
    module = importlib.import_module(f"hpsearch.{hpsearch._API[name]}")
    assert getattr(hpsearch, name) is getattr(module, name)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'Tsak'"):
        hpsearch.Tsak


def test_importing_hpsearch_does_not_import_torch_until_a_name_needs_it():
    code = ("import sys, hpsearch\n"
            "assert 'torch' not in sys.modules, 'import hpsearch imported torch'\n"
            "hpsearch.Task\n"
            "assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_type_checkers_see_every_public_name_from_its_module():
    """The ``if TYPE_CHECKING:`` imports re-export (``import X as X``) each name of _API from its module."""
    tree = ast.parse((ROOT / "hpsearch" / "__init__.py").read_text())
    (block,) = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    seen = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom), ast.unparse(node)
        for alias in node.names:
            assert alias.asname == alias.name, f"{alias.name}: import it as itself to re-export it"
            seen[alias.name] = node.module
    assert seen == {name: f"hpsearch.{module}" for name, module in hpsearch._API.items()}


def test_py_typed_ships_with_the_package():
    assert (ROOT / "hpsearch" / "py.typed").is_file()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["hpsearch"]
