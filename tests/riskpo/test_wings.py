"""riskpo/ is in wings that import one way (README, "Layout"): algo, data, run, models, loop,
each importing only the contract at the top (options, messages, batch) and the wings before it,
and algo nothing of the project but options. A static check of every import statement."""

from __future__ import annotations

import ast
from pathlib import Path

RISKPO = Path(__file__).resolve().parents[2] / "riskpo"
TOP = {"riskpo.options", "riskpo.messages", "riskpo.batch"}
WINGS = ("algo", "data", "run", "models", "loop")
ALLOWED = {f"riskpo.{wing}": {f"riskpo.{w}" for w in WINGS[:index + 1]} | TOP
           for index, wing in enumerate(WINGS)}
ALLOWED["riskpo.algo"] = {"riskpo.algo", "riskpo.options"}
ALLOWED.update({"riskpo.options": {"riskpo.options"}, "riskpo.messages": {"riskpo.options"},
                "riskpo.batch": {"riskpo.messages"}})


def _unit(module: str) -> str:
    """riskpo.algo.losses -> riskpo.algo; riskpo.messages -> riskpo.messages."""
    return ".".join(module.split(".")[:2])


def _imports() -> list[tuple[str, str, int, str]]:
    found = []
    for path in RISKPO.rglob("*.py"):
        module = "riskpo." + ".".join(path.relative_to(RISKPO).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            found += [(_unit(module), _unit(t), node.lineno, str(path)) for t in targets
                      if t.split(".")[0] == "riskpo" and t != "riskpo"]
    return found


def test_every_wing_imports_only_the_top_and_the_wings_before_it():
    wrong = [f"{path}:{line} ({unit} imports {target})" for unit, target, line, path in _imports()
             if unit in ALLOWED and target != unit and target not in ALLOWED[unit]]
    assert not wrong, "\n".join(wrong)


def test_every_riskpo_module_belongs_to_a_wing_or_the_top():
    units = {_unit("riskpo." + ".".join(p.relative_to(RISKPO).with_suffix("").parts))
             for p in RISKPO.rglob("*.py") if p.name != "__init__.py" or p.parent != RISKPO}
    assert units <= set(ALLOWED), sorted(units - set(ALLOWED))
