"""The import rules of docs/architecture.md, and the promise never to unpickle."""

import ast
import importlib
from pathlib import Path

import pytest

from t2i.cli import COMMANDS, build_parser, main

SRC = Path(__file__).resolve().parents[1] / "src" / "t2i"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imported_names(path: Path) -> set[str]:
    """Every module `path` imports anywhere in its code (function-local imports included),
    resolved to the most specific t2i module: `from t2i.train import clip` -> t2i.train.clip."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.relative_to(SRC)}: relative import; write t2i.... in full"
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                names.add(sub if sub in MODULES else node.module)
    return names


def imports_of(path: Path) -> set[str]:
    """The t2i modules `path` imports."""
    return {n for n in imported_names(path) if n == "t2i" or n.startswith("t2i.")}


def part_of(module: str) -> str:
    """t2i.data.celeba -> "data"; t2i.pipeline -> "pipeline"; t2i -> "__init__"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


# The foundation: leaf modules that import no other part of t2i (but the atomic writes of `files`);
# every other part may use them.
FOUNDATION = ("attributes", "config", "errors", "files", "hub", "imaging", "prompt_syntax", "tokenizer", "vocabulary")
# Every other part, lowest layer first, and the parts (or single modules: "data.captions") it
# may import besides itself, the foundation and the package root (`__version__`). A part may
# import only parts listed above it, so imports flow one way; `cli` is at the top and only
# `python -m t2i` (`__main__`) imports it.
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "__init__": (),
    **{part: () for part in FOUNDATION},
    "tokenizer": ("files",),  # saved atomically
    "vocabulary": ("files",),
    "checkpoint": (),
    "diffusion": (),  # samplers take a callable: never the networks
    "models": (),
    "data": (),
    "text_encoder": ("checkpoint", "models"),
    "pipeline": ("checkpoint", "diffusion", "models", "text_encoder"),  # never data or train
    "train": ("checkpoint", "data", "diffusion", "models", "pipeline", "text_encoder"),
    "eval": ("checkpoint", "data", "diffusion", "models", "pipeline", "text_encoder"),  # never train
    "generate": ("data.captions", "pipeline"),
    # The web app: the pipeline, plus the pure-text caption vocabulary for its attribute checkboxes.
    "app": ("checkpoint", "data.captions", "pipeline"),
    "live": ("app", "data.captions", "generate", "pipeline"),
    "export": ("checkpoint", "eval", "pipeline"),  # an inference-only folder: never data, train or app
    "workflow": ("checkpoint", "data", "eval", "train"),
    "cli": (),  # the subcommand modules are named in COMMANDS and imported by name
    "__main__": ("cli",),  # `python -m t2i`
}


def may_import(part: str, module: str) -> bool:
    if part_of(module) in FOUNDATION and part not in FOUNDATION:
        return True
    for allowed in ("__init__", part, *MAY_IMPORT[part]):
        if module == f"t2i.{allowed}" or ("." not in allowed and part_of(module) == allowed):
            return True
    return False


def test_every_part_has_a_rule():
    parts = {part_of(m) for m in MODULES}
    assert parts == set(MAY_IMPORT), f"without a rule: {parts - set(MAY_IMPORT)}; stale: {set(MAY_IMPORT) - parts}"
    order = list(MAY_IMPORT)
    for part, allowed in MAY_IMPORT.items():
        for other in allowed:  # one way: a part imports only parts listed above it
            assert order.index(other.split(".")[0]) < order.index(part), f"{part} may import {other}, listed below it"


@pytest.mark.parametrize("part", list(MAY_IMPORT))
def test_imports_flow_one_way(part):
    for name, path in MODULES.items():
        if part_of(name) == part:
            bad = sorted(m for m in imports_of(path) if not may_import(part, m))
            assert not bad, f"{path.relative_to(SRC)} ({part}) imports {bad}; it may import {MAY_IMPORT[part]}"


def test_no_import_cycle():
    graph = {m: sorted(imports_of(p) & set(MODULES)) for m, p in MODULES.items()}
    done: set[str] = set()

    def visit(module: str, stack: list[str]) -> None:
        if module in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(module):] + [module]))
        if module not in done:
            for dep in graph[module]:
                visit(dep, stack + [module])
            done.add(module)

    for module in graph:
        visit(module, [])


def test_prompt_syntax_is_pure_text():
    bad = sorted(n for n in imported_names(SRC / "prompt_syntax.py") if n.split(".")[0] in ("t2i", "torch", "numpy"))
    assert not bad, f"prompt_syntax.py imports {bad}"


def test_no_module_getattr():
    # A module-level __getattr__ re-exports names lazily, which can hide an import cycle.
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        assert not any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body), name


def test_nothing_unpickles():
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for needle in ("torch.load(", "pickle.load", "import pickle", "weights_only=False"):
            assert needle not in text, f"{path.relative_to(SRC)} uses {needle}"


def test_every_command_module_imports_and_has_run():
    for words, (module_name, _) in COMMANDS.items():
        if module_name.startswith("t2i.app"):
            pytest.importorskip("gradio")
        module = importlib.import_module(module_name)
        assert callable(module.add_arguments) and callable(module.run), words


def test_help_lists_every_command(capsys):
    assert main([]) == 0
    text = build_parser().format_help()
    for words in COMMANDS:
        assert words[0] in text
