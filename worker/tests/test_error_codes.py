"""The error-code table (`error_codes.py`) against the worker's source, and its JSON form."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from lathe_worker import errors
from lathe_worker.error_codes import ERROR_CODES, as_json

PACKAGE = Path(__file__).resolve().parents[1] / "lathe_worker"
ERROR_CLASSES = {name: cls.category for name, cls in vars(errors).items()
                 if isinstance(cls, type) and issubclass(cls, errors.WorkerError)}


def _strings(node: ast.AST) -> list[str]:
    """The string constants a code expression can take (a literal, or `a if c else b` of literals)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    return []


def raised_codes() -> tuple[dict[str, set[str | None]], list[str]]:
    """code -> categories of the classes raising it (None: passed on as `code=`), and the raise sites whose
    code is not a literal (an f-string, a variable), which this check could not see. A helper may raise
    its own `code` parameter: its callers pass that as a `code="..."` literal."""
    found: dict[str, set[str | None]] = {}
    opaque: list[str] = []
    for file in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(file.read_text())
        passed_on = {id(call.args[0]) for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef)
                     and "code" in {a.arg for a in fn.args.args + fn.args.kwonlyargs}
                     for call in ast.walk(fn) if isinstance(call, ast.Call) and call.args
                     and isinstance(call.args[0], ast.Name) and call.args[0].id == "code"}
        for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
            # `super().__init__("code", ...)` in an error class raises that class's category.
            base = next((b.id for b in cls.bases if isinstance(b, ast.Name) and b.id in ERROR_CLASSES), None)
            for call in ast.walk(cls):
                if (base and isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                        and call.func.attr == "__init__" and call.args):
                    for code in _strings(call.args[0]):
                        found.setdefault(code, set()).add(ERROR_CLASSES[cls.name])
        for call in [n for n in ast.walk(tree) if isinstance(n, ast.Call)]:
            for kw in call.keywords:
                if kw.arg == "code":
                    for code in _strings(kw.value):
                        found.setdefault(code, set()).add(None)
            name = call.func.id if isinstance(call.func, ast.Name) else None
            if name not in ERROR_CLASSES or not call.args or name == "ModelNotFoundError":
                continue
            codes = _strings(call.args[0])
            reraised = isinstance(call.args[0], ast.Attribute) and call.args[0].attr == "code"
            if not codes and not reraised and id(call.args[0]) not in passed_on:
                opaque.append(f"{file.name}:{call.lineno}")  # re-raising `exc.code` is fine: it was checked
            for code in codes:
                found.setdefault(code, set()).add(ERROR_CLASSES[name])
    return found, opaque


def test_every_raised_code_is_in_the_table_with_its_category():
    found, opaque = raised_codes()
    assert not opaque, f"error codes must be string literals (or code=\"...\") at these raise sites: {opaque}"
    assert len(found) > 40  # the scan sees the codes at all
    missing = sorted(set(found) - set(ERROR_CODES))
    assert not missing, f"raised but not in error_codes.ERROR_CODES: {missing}"
    wrong = {code: cats for code, cats in found.items() if cats - {None, ERROR_CODES[code].category}}
    assert not wrong, f"raised with a category other than the table's: {wrong}"


def test_the_table_has_no_code_the_worker_never_raises():
    found, _ = raised_codes()
    assert sorted(set(ERROR_CODES) - set(found)) == []


def test_statuses_fit_categories():
    for code, entry in ERROR_CODES.items():
        assert code.isidentifier() and code == code.lower(), code
        assert (400 <= entry.status < 500) if entry.category == "user" else (500 <= entry.status < 600), code


def test_cli_prints_the_table_as_json():
    out = subprocess.run([sys.executable, "-m", "lathe_worker.error_codes", "--json"], cwd=PACKAGE.parent,
                         capture_output=True, text=True, check=True).stdout
    table = json.loads(out)
    assert table == as_json()
    assert list(table) == sorted(ERROR_CODES)
    assert table["unknown_adapter"] == {"status": 404, "category": "user"}
    assert table["internal"] == {"status": 500, "category": "server"}
    assert all(set(entry) == {"status", "category"} for entry in table.values())
