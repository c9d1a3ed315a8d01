"""One direction of flow: training, the server and the client each build on ``common/``, never
on one another, so that each side runs, ships and changes without the others.

Allowed (``ALLOWED``):
- the server (``serving/*.py``, ``serving/api``, ``codecs``, ``native``, ``http``) imports the
  server and ``common``, never the client (``serving/client``) nor training;
- the client (``serving/client``) imports the client and ``common``, never the server nor
  training;
- training imports training and ``common``, never ``serving``;
- ``common`` imports only ``common``; ``serving/__init__.py`` is held to the same, since
  importing either side of ``serving`` runs it; the server and the client may import it,
  training and ``common`` never: the image's training stage has no ``serving`` (its
  ``fmnist-train --version`` failed the image's build there).
The generated protos (``fashion_mnist``, ``inference``), the standard library and third-party
packages are no side: what each side may load of those is test_serving_imports.py's (and, for
``common``'s up-front imports, the last test here). Imports are read with ``ast``, those inside
functions too (the lazy ones); an import by a computed name (``importlib.import_module``) is not
seen.
"""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIDES = ("client", "server", "training", "common")
ALLOWED = {"client": {"client", "common", "serving"}, "server": {"server", "common", "serving"},
           "training": {"training", "common"}, "common": {"common"}, "serving": {"common"}}


def side(module: str) -> str | None:
    """Which side ``module`` is on, or None for a module of no side."""
    if module == "serving":  # the package the server and the client live in
        return "serving"
    if module == "serving.client" or module.startswith("serving.client."):
        return "client"
    if module.startswith("serving."):
        return "server"
    top = module.partition(".")[0]
    return top if top in SIDES else None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    """Every module of the three sides and ``common``, by name."""
    return {module_name(path): path for top in ("serving", "training", "common")
            for path in sorted((ROOT / top).rglob("*.py")) if "_pb2" not in path.name}


def imported(node: ast.Import | ast.ImportFrom, module: str, path: Path,
             known: dict[str, Path]) -> list[str]:
    """The modules ``node`` imports: ``from a import b`` is ``a.b`` where that is a module
    (``from serving import native``), else ``a``; relative imports resolved."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".")[: None if path.name == "__init__.py" else -1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, *([base] if base else [])])
    return list(dict.fromkeys(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known
                              else base for alias in node.names))


def crossings() -> list[str]:
    known = sources()
    wrong = []
    for module, path in known.items():
        own = side(module)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in imported(node, module, path, known):
                other = side(target)
                if other and other not in ALLOWED[own]:
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} ({own}) imports "
                                 f"{target} ({other})")
    return wrong


def test_no_side_imports_another_but_common():
    found = crossings()
    assert not found, "\n".join(["", *found])


def test_the_check_sees_a_crossing(tmp_path, monkeypatch):
    """A client module importing the server, lazily and relatively, is found."""
    for folder in ("serving/client", "training", "common"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "serving/__init__.py").write_text("")
    (tmp_path / "serving/security.py").write_text("")
    (tmp_path / "serving/client/__init__.py").write_text("")
    (tmp_path / "serving/client/x.py").write_text("def f():\n    from .. import security\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert crossings() == ["serving/client/x.py:2 (client) imports serving.security (server)"]


class _UpFront(ast.NodeVisitor):
    """The imports a module runs when it is imported: not those inside functions."""

    def __init__(self) -> None:
        self.names: list[tuple[int, str]] = []

    def visit_FunctionDef(self, node) -> None:
        pass

    visit_AsyncFunctionDef = visit_FunctionDef  # noqa: N815

    def visit_Import(self, node) -> None:
        self.names += [(node.lineno, alias.name) for alias in node.names]

    def visit_ImportFrom(self, node) -> None:
        if not node.level:  # a relative one is of the package: the test above checks it
            self.names.append((node.lineno, node.module))


def test_common_imports_only_the_standard_library_and_numpy_up_front():
    """common/__init__.py's rule, so that each side imports common without the others'
    dependencies: any other package (Pillow) is imported inside the function that uses it."""
    wrong = []
    for module, path in sources().items():
        if side(module) not in ("common", "serving"):  # serving/__init__.py: common's rule
            continue
        visitor = _UpFront()
        visitor.visit(ast.parse(path.read_text(), str(path)))
        wrong += [f"{path.relative_to(ROOT)}:{line} imports {name}" for line, name in visitor.names
                  if name.partition(".")[0] not in {*sys.stdlib_module_names, "numpy", "common"}]
    assert not wrong, "\n".join(["", *wrong])
