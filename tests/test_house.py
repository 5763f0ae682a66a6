"""The house plan, checked: each layer imports only the layers below it, no two files import each other,
and every third-party package Easel's code imports is named in requirements.txt (Ray, optional, in
requirements-ray.txt)."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# lowest first; a module may import its own layer and the ones before it
LAYERS = [
    ("webui", "webui.prompts", "webui.images"),
    ("webui.models",),
    ("webui.generation",),
    ("webui.features", "webui.training"),
    ("webui.gallery",),
    ("webui.jobs",),
    ("webui.settings", "webui.options"),
    ("webui.runtime",),
    ("webui.services",),
    ("webui.extensions",),
    ("webui.workers",),
    ("webui.admission", "webui.auth"),
    ("webui.api", "webui.ui", "webui.demo"),
    ("app",),
]


def layer_of(module: str) -> int:
    best, found = -1, None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    assert found is not None, f"{module} is in no layer of the house plan"
    return found


def sources() -> dict[str, Path]:
    files = {"app": ROOT / "app.py"}
    for path in (ROOT / "webui").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imports_of(module: str, path: Path) -> set[str]:
    """Every module a file imports (at the top, inside functions and under TYPE_CHECKING alike)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def easel_imports() -> dict[str, set[str]]:
    files = sources()
    graph = {}
    for module, path in files.items():
        graph[module] = {m for m in imports_of(module, path) if m in files and m != module}
    return graph


def test_no_module_imports_a_layer_above_its_own():
    wrong = [f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
             for module, targets in easel_imports().items() for target in targets
             if layer_of(target) > layer_of(module)]
    assert not wrong, "\n".join(wrong)


def test_no_two_files_import_each_other():
    graph = easel_imports()
    pairs = sorted({tuple(sorted((a, b))) for a, targets in graph.items() for b in targets
                    if a in graph.get(b, ()) and not (a.startswith(b + ".") or b.startswith(a + "."))})
    assert not pairs, pairs


def test_every_third_party_import_is_in_requirements():
    """A package Easel imports but does not list works only by the luck of another package's dependencies
    (PyYAML was such a case)."""
    wanted = {re.split(r"[=<>~\[ ;#]", line.strip())[0].lower().replace("_", "-")
              for req in ("requirements.txt", "requirements-ray.txt")
              for line in (ROOT / req).read_text().splitlines() if line.strip() and not line.startswith("#")}
    distributions = importlib.metadata.packages_distributions()
    missing = set()
    for module, path in sources().items():
        for name in imports_of(module, path):
            top = name.split(".")[0]
            if not top or top in sys.stdlib_module_names or top in ("webui", "app", "easel_extensions"):
                continue
            dists = {d.lower().replace("_", "-") for d in distributions.get(top, [top])}
            if not dists & wanted:
                missing.add(f"{top} ({', '.join(sorted(dists))}) imported by {module}")
    assert not missing, "\n".join(sorted(missing))
