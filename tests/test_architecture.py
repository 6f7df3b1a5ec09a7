"""The architecture rules of docs/architecture.md, checked on the source text (AST, no imports).

Fast (well under a second) and free of torch: every ``talkcli`` module is parsed, never
imported. Each rule is one parametrized case, so a failure names the rule it breaks, and each
violation is one line ``file:line: rule: what: what to do``.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "talkcli"
DOC = "docs/architecture.md"

# The layer of each first-level name under talkcli (bottom 0 .. top 4); see docs/architecture.md.
LAYERS: dict[str, int] = {
    # 0: foundations, import nothing above them
    "__init__": 0,
    "errors": 0,
    "console": 0,
    "guards": 0,
    "constants": 0,
    "signals": 0,
    "device": 0,
    "compiled": 0,  # torch.compile where it pays (--compile), with an eager fallback
    "distributed": 0,
    "ranges": 0,  # option ranges shared by the CLI and the library configs (numbers only)
    # 1: files and media, audio features, plots
    "io": 1,
    "audio": 1,
    "plots": 1,
    "provenance": 1,  # software versions for manifests (asks io.ffmpeg which ffmpeg is used)
    # 2: networks and model files
    "models": 2,
    "weights": 2,
    # 3: the work
    "face": 3,
    "inversion": 3,
    "metrics": 3,
    "train": 3,
    "animate": 3,
    "runtime": 3,
    "tiny": 3,
    "directions": 3,
    # 4: the command line
    "commands": 4,
    "cli": 4,
    "entry": 4,  # launches the CLI (installs signal handling first); nothing imports it
    "__main__": 4,
}
LAYER_NAMES = {0: "foundation", 1: "io", 2: "models", 3: "work", 4: "CLI"}
CLI_PACKAGES = {"commands", "cli", "entry", "__main__"}  # where typer/click may be imported
NO_CONSOLE = {"io", "audio", "plots", "models", "weights"}  # layers 1-2: log, never print
MAX_BODY_LINES = 100

# Upward imports that are allowed, each with its reason: (importing file, imported module).
# Only lazy ones (inside a function) may be listed; the test checks that they still are.
UPWARD_ALLOWED: dict[tuple[str, str], str] = {}  # (file, module) -> reason; none today

# Declared dependencies whose import name differs from the distribution name.
IMPORT_NAMES: dict[str, str] = {
    "opencv-python-headless": "cv2",
    "scikit-image": "skimage",
    "pillow": "PIL",
    "imageio-ffmpeg": "imageio_ffmpeg",
    "python_speech_features": "python_speech_features",
}
# Declared dependencies that talkcli itself never imports, and why they are declared anyway.
NOT_IMPORTED: dict[str, str] = {
    "tqdm": "face-alignment imports it; face-alignment is installed with --no-deps",
    "numba": "face-alignment imports it; face-alignment is installed with --no-deps",
}


@dataclass(frozen=True)
class Module:
    """One talkcli source file: its path, dotted name, top package and parsed tree."""

    path: Path
    name: str  # "talkcli.io.video"
    top: str  # "io"
    tree: ast.Module

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT).as_posix()

    @property
    def layer(self) -> int:
        return LAYERS[self.top]


@cache
def modules() -> tuple[Module, ...]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts  # ("talkcli", "io", "video")
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        top = parts[1]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found.append(Module(path, name, top, tree))
    return tuple(found)


def imported_names(mod: Module) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in ``mod``, at any depth (lazy ones too);
    ``from a import b`` gives ``a.b`` so that ``from talkcli import commands`` is seen."""
    out: list[tuple[int, str]] = []
    package = mod.name if mod.path.name == "__init__.py" else mod.name.rpartition(".")[0]
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return out


def talkcli_top(dotted: str) -> str | None:
    """The first-level talkcli name an import reaches ("talkcli.io.video" -> "io")."""
    parts = dotted.split(".")
    if parts[0] != "talkcli":
        return None
    if len(parts) == 1:
        return "__init__"
    return parts[1] if parts[1] in LAYERS else "__init__"  # `from talkcli import __version__`


# -- rules: each returns one line per violation ----------------------------------------------------


def rule_layers() -> list[str]:
    """A module imports only from its own layer or below."""
    bad = []
    for mod in modules():
        for line, name in imported_names(mod):
            top = talkcli_top(name)
            if top is None or top == mod.top or LAYERS[top] <= mod.layer:
                continue
            if (mod.rel, name.rpartition(".")[0]) in UPWARD_ALLOWED or (
                mod.rel,
                name,
            ) in UPWARD_ALLOWED:
                continue
            bad.append(
                f"{mod.rel}:{line}: layers: talkcli.{mod.top} (layer {mod.layer}, "
                f"{LAYER_NAMES[mod.layer]}) imports {name} (layer {LAYERS[top]}, "
                f"{LAYER_NAMES[LAYERS[top]]}): move the code to the higher layer or pass the "
                f"value/callback down (see {DOC})"
            )
    return bad


def rule_cli_imports() -> list[str]:
    """typer, click and talkcli.commands are imported only by the CLI layer."""
    bad = []
    for mod in modules():
        if mod.top in CLI_PACKAGES:
            continue
        for line, name in imported_names(mod):
            root = name.split(".")[0]
            if root in ("typer", "click") or name.startswith("talkcli.commands"):
                bad.append(
                    f"{mod.rel}:{line}: cli-imports: {mod.name} imports {name}, which belongs "
                    "to the CLI layer (talkcli/commands/, talkcli/cli.py): raise a "
                    f"talkcli.errors exception or take a parameter instead (see {DOC})"
                )
    return bad


def _console_aliases(mod: Module) -> set[str]:
    """Local names bound to the module talkcli.console (``from talkcli import console``...)."""
    names = set()
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.ImportFrom) and node.module == "talkcli" and not node.level:
            names |= {a.asname or a.name for a in node.names if a.name == "console"}
        elif isinstance(node, ast.Import):
            names |= {a.asname for a in node.names if a.name == "talkcli.console" and a.asname}
    return names


def rule_cli_settings() -> list[str]:
    """The CLI globals (talkcli.console.settings) are read only by the CLI layer."""
    bad = []
    for mod in modules():
        if mod.top in CLI_PACKAGES or mod.top == "console":
            continue
        aliases = _console_aliases(mod)
        for node in ast.walk(mod.tree):
            hit = False
            if isinstance(node, ast.ImportFrom) and node.module == "talkcli.console":
                hit = any(a.name == "settings" for a in node.names)
            elif isinstance(node, ast.Attribute) and node.attr == "settings":
                value = node.value
                hit = (isinstance(value, ast.Name) and value.id in aliases) or (
                    ast.unparse(value) == "talkcli.console"
                )
            if hit:
                bad.append(
                    f"{mod.rel}:{node.lineno}: cli-settings: {mod.name} reads the CLI globals "
                    "talkcli.console.settings (weights_dir, device, quiet, debug): take them as "
                    f"parameters (e.g. runtime.ModelSet(weights_dir, device)) (see {DOC})"
                )
    return bad


def rule_no_console_below_work() -> list[str]:
    """Layers 1-2 (io, audio, plots, models, weights) log instead of printing to the console."""
    bad = []
    for mod in modules():
        if mod.top not in NO_CONSOLE:
            continue
        for line, name in imported_names(mod):
            if name == "talkcli.console" or name.startswith("talkcli.console."):
                bad.append(
                    f"{mod.rel}:{line}: no-console: {mod.name} (layer {mod.layer}) imports "
                    f"{name}: use logging.getLogger(__name__) (log.info / log.warning, which the "
                    f"CLI shows like info()/warn()) or a callback argument (see {DOC})"
                )
    return bad


def body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end of the function."""
    body = fn.body
    first = body[0]
    is_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    if is_doc and len(body) > 1:
        first = body[1]
    return fn.end_lineno - first.lineno + 1


def rule_function_length() -> list[str]:
    """No function body is longer than 100 lines."""
    bad = []
    for mod in modules():
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = body_lines(node)
                if n > MAX_BODY_LINES:
                    bad.append(
                        f"{mod.rel}:{node.lineno}: function-length: {node.name} has a "
                        f"{n}-line body (limit {MAX_BODY_LINES}): split it into named, typed "
                        f"steps (see {DOC})"
                    )
    return bad


def declared_dependencies() -> list[tuple[int, str]]:
    """(line in pyproject.toml, distribution name) of every entry of [project] dependencies."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip().startswith("dependencies = ["))
    out = []
    for i in range(start + 1, len(lines)):
        if lines[i].strip() == "]":
            break
        m = re.match(r'\s*"([A-Za-z0-9_.\-]+)', lines[i])
        if m:
            out.append((i + 1, m.group(1)))
    return out


def rule_dependencies_used() -> list[str]:
    """Every declared dependency is imported by talkcli or has a stated reason (NOT_IMPORTED)."""
    used = set()
    for mod in modules():
        used |= {name.split(".")[0] for _line, name in imported_names(mod)}
    bad = []
    for line, dist in declared_dependencies():
        key = dist.lower()
        if key in NOT_IMPORTED:
            continue
        module = IMPORT_NAMES.get(key, key.replace("-", "_"))
        if module not in used:
            bad.append(
                f"pyproject.toml:{line}: dependencies: {dist} is declared but no talkcli module "
                f"imports {module}: drop it, or add it with the reason to NOT_IMPORTED in "
                f"tests/test_architecture.py (and say why in pyproject.toml)"
            )
    return bad


RULES = {
    "layers": rule_layers,
    "cli-imports": rule_cli_imports,
    "cli-settings": rule_cli_settings,
    "no-console": rule_no_console_below_work,
    "function-length": rule_function_length,
    "dependencies": rule_dependencies_used,
}


@pytest.mark.parametrize("rule", list(RULES))
def test_architecture_rule(rule: str) -> None:
    violations = RULES[rule]()
    assert not violations, f"{len(violations)} violation(s) of '{rule}':\n" + "\n".join(violations)


def _lazy_imports(mod: Module) -> set[str]:
    """Dotted names (module and module.name) imported inside a function of ``mod``."""
    names: set[str] = set()
    for fn in ast.walk(mod.tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            inner = Module(mod.path, mod.name, mod.top, ast.Module(body=fn.body, type_ignores=[]))
            for _line, name in imported_names(inner):
                names |= {name, name.rpartition(".")[0]}
    return names


def test_allowed_upward_imports_are_lazy_and_still_exist() -> None:
    by_rel = {m.rel: m for m in modules()}
    for (rel, target), reason in UPWARD_ALLOWED.items():
        assert reason
        mod = by_rel.get(rel)
        assert mod is not None, f"{rel}: gone: remove it from UPWARD_ALLOWED"
        assert target in _lazy_imports(mod), (
            f"{rel}: no longer imports {target} inside a function: remove it from "
            "UPWARD_ALLOWED (an upward import at module level is never allowed)"
        )


def test_every_talkcli_package_has_a_layer() -> None:
    missing = sorted({m.top for m in modules()} - set(LAYERS))
    assert not missing, (
        f"talkcli/{missing[0]}: no layer: add it to LAYERS in tests/test_architecture.py "
        f"and to the table in {DOC}"
    )


# -- the rules catch what they should (on small sources, so a rule cannot pass by accident) --------


def _fake(name: str, source: str) -> Module:
    parts = name.split(".")
    path = PACKAGE.joinpath(*parts[1:]).with_suffix(".py")
    return Module(path, name, parts[1], ast.parse(source))


def test_rules_catch_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = (
        _fake("talkcli.io.bad", "from talkcli.models import x\nfrom talkcli import console\n"),
        _fake("talkcli.models.bad", "def f():\n    from ..commands import _common\n"),
        _fake("talkcli.face.bad", "from talkcli import console\nw = console.settings.device\n"),
        _fake("talkcli.face.long", "def f():\n" + "    x = 1\n" * 101),
    )
    monkeypatch.setattr(sys.modules[__name__], "modules", lambda: fake)
    assert [v.split(": ")[1] for v in rule_layers()] == ["layers", "layers"]
    assert len(rule_cli_imports()) == 1 and "talkcli.commands._common" in rule_cli_imports()[0]
    assert len(rule_cli_settings()) == 1 and rule_cli_settings()[0].startswith(
        "talkcli/face/bad.py:2: cli-settings"
    )
    assert len(rule_no_console_below_work()) == 1
    assert rule_function_length()[0].startswith("talkcli/face/long.py:1: function-length: f has")
