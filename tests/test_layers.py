"""The core never imports an adapter: adapters are found through entry points only.

(The layers between the core's packages are import-linter contracts in pyproject.toml; the
adapters live in providers/, outside the tree import-linter walks, so this rule is here.)
"""

from __future__ import annotations

import ast

from tests.support import ROOT


def test_no_core_module_imports_trafficflip_providers() -> None:
    offenders = []
    for path in sorted((ROOT / "trafficflip").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(ROOT)}: {n}"
                for n in names
                if n == "trafficflip.providers" or n.startswith("trafficflip.providers.")
            ]
    assert offenders == []
