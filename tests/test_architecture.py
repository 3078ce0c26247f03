"""The import rules of docs/architecture.md, and the promise never to unpickle."""

import ast
import importlib
from pathlib import Path

import pytest

from t2i.cli import COMMANDS, build_parser, main

SRC = Path(__file__).resolve().parents[1] / "src" / "t2i"


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def modules_under(rel: str) -> list[Path]:
    p = SRC / rel
    return sorted(p.rglob("*.py")) if p.is_dir() else [p]


RULES = [
    # (modules, forbidden import prefixes)
    ("diffusion", ("t2i.models", "t2i.data", "t2i.train", "t2i.pipeline")),
    ("models", ("t2i.data", "t2i.train", "t2i.pipeline", "t2i.eval", "t2i.app")),
    ("pipeline.py", ("t2i.data", "t2i.train", "t2i.eval", "t2i.app")),
    ("text_encoder.py", ("t2i.data", "t2i.train")),
    ("checkpoint.py", ("t2i.data", "t2i.train", "t2i.pipeline")),
    ("app", ("t2i.train", "t2i.eval", "t2i.models", "t2i.diffusion")),
    ("prompt_syntax.py", ("t2i.", "torch", "numpy")),  # pure text
    ("hub.py", ("t2i.",)),  # huggingface_hub only: the pipeline imports it
    ("export.py", ("t2i.data", "t2i.train", "t2i.app")),
]


@pytest.mark.parametrize("where,forbidden", RULES, ids=[r[0] for r in RULES])
def test_imports_flow_one_way(where, forbidden):
    for path in modules_under(where):
        bad = [m for m in imports_of(path) if m.startswith(forbidden)]
        assert not bad, f"{path.relative_to(SRC)} imports {bad}"


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
