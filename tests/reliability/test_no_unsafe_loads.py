"""No unsafe deserialisation anywhere in the code base (library, notebooks, scripts)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*ROOT.glob("lib/geowall/**/*.py"), *ROOT.glob("notebooks/*.py"), *ROOT.glob("tests/benchmarks/*.py")])


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def unsafe_calls(tree: ast.AST) -> list[str]:
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
        attr = node.func.attr
        if owner == "np" and attr == "load":
            v = _kw(node, "allow_pickle")
            if not (isinstance(v, ast.Constant) and v.value is False):
                bad.append(f"line {node.lineno}: np.load without allow_pickle=False")
        if owner == "torch" and attr == "load":
            v = _kw(node, "weights_only")
            if not (isinstance(v, ast.Constant) and v.value is True):
                bad.append(f"line {node.lineno}: torch.load without weights_only=True")
        if owner in {"pickle", "joblib", "dill", "cloudpickle"} and attr in {"load", "loads"}:
            bad.append(f"line {node.lineno}: {owner}.{attr}")
    return bad


def test_checker_catches_each_unsafe_form():
    code = (
        "np.load(p)\nnp.load(p, allow_pickle=True)\ntorch.load(p)\npickle.load(f)\njoblib.load(p)\n"
        "np.load(p, allow_pickle=False)\ntorch.load(p, weights_only=True)"
    )
    assert len(unsafe_calls(ast.parse(code))) == 5


def test_code_base_has_no_unsafe_loads():
    assert SOURCES
    problems = {str(p.relative_to(ROOT)): unsafe_calls(ast.parse(p.read_text())) for p in SOURCES}
    assert not {k: v for k, v in problems.items() if v}
