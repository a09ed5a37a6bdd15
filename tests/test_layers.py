"""The package's layers import one way: core -> data / kernels -> infer / export -> train / eval -> serve -> cli.

Every import of a `minimind` module, at the top of a file or inside a function, is read from the source (`ast`), and
each must name the module's own package or a lower layer. Also: no `if __name__ == "__main__"` outside `cli/`
and `minimind/__main__.py`.
"""

import ast
from pathlib import Path

import minimind

ROOT = Path(minimind.__file__).parent
CORE = 0
LAYERS = {"data": 1, "kernels": 1, "infer": 2, "export": 2, "train": 3, "eval": 3, "serve": 4, "cli": 5}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, name: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every minimind import in module `name`'s source, lazy ones included."""
    package = name if is_package else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found += [(node.lineno, t) for t in targets if t == "minimind" or t.startswith("minimind.")]
    return found


def layer_of(module: str) -> tuple[int, str]:
    """(layer, subpackage) of a module name: the subpackages' layers, else the core (flat modules)."""
    parts = module.split(".")
    sub = "cli" if module == "minimind.__main__" else parts[1] if len(parts) > 1 else ""
    if sub in LAYERS:
        return LAYERS[sub], sub
    return CORE, "core"


def sources():
    return sorted(p for p in ROOT.rglob("*.py") if p.name != "__init__.py" or p.parent != ROOT)


def test_every_import_runs_down_the_layers():
    wrong = []
    for path in sources():
        here, here_package = layer_of(module_name(path))
        for line, target in imported(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py"):
            there, there_package = layer_of(target)
            if target == "minimind" or (there >= here and there_package != here_package):
                wrong.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target}")
    assert not wrong, "imports that run upward or sideways:\n" + "\n".join(wrong)


def test_the_checker_sees_lazy_and_relative_imports():
    """An import inside a function, relative or absolute, is read as the absolute module it loads, and one that runs
    up the layers is caught."""
    source = "import torch\n\ndef f():\n    from ..infer.engine import DecodeBatch\n    import minimind.serve.app\n"
    found = imported(source, "minimind.data.tooluse")
    assert found == [(4, "minimind.infer.engine"), (5, "minimind.serve.app")]
    assert [layer_of(t) for _, t in found] == [(2, "infer"), (4, "serve")]
    assert layer_of("minimind.data.tooluse") == (1, "data") and layer_of("minimind.model") == (CORE, "core")


def test_no_main_block_outside_the_command_line():
    found = [str(p.relative_to(ROOT.parent)) for p in sources()
             if layer_of(module_name(p))[1] not in ("cli", "__main__") and '__name__ == "__main__"' in p.read_text()]
    assert not found, f"__main__ blocks outside minimind/cli: {found}"
