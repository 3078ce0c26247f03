"""`t2i` command line. Each subcommand lives in the module that does the work and exposes
`add_arguments(parser)` and `run(args) -> int`; this file only wires them together.

`main(argv)` returns an exit code (tests call it directly); `entry()` is the console script.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from t2i.errors import run_command

# (command words) -> (module, one-line help). `build_parser` imports every module (each adds
# its own arguments); one whose optional extra is missing (the web app without gradio) still
# shows in --help and explains itself when run, so it cannot break unrelated commands.
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("data", "synth"): ("t2i.data.synthfaces", "generate a SynthFaces dataset in CelebA's layout"),
    ("data", "captions"): ("t2i.data.write_captions", "write captions.json from the attribute file"),
    ("data", "show"): ("t2i.data.show", "print a dataset summary and save a captioned grid"),
    ("train", "vae"): ("t2i.train.vae", "stage 1: train the KL-VAE"),
    ("train", "clip"): ("t2i.train.clip", "stage 2: train the tokenizer and CLIP"),
    ("train", "unet"): ("t2i.train.unet", "stage 3: train the conditional latent UNet"),
    ("train", "judge"): ("t2i.train.judge", "train the attribute classifier used by eval"),
    ("train", "all"): ("t2i.workflow", "run every stage in order (resumable)"),
    ("encode",): ("t2i.train.encode", "encode a dataset into a latent cache with the VAE"),
    ("generate",): ("t2i.generate", "generate images from a prompt"),
    ("live",): ("t2i.live", "interactive prompt loop that shows each image forming"),
    ("serve",): ("t2i.app.server", "web demo (Gradio) with a streaming API"),
    ("eval",): ("t2i.eval.run", "measure prompt faithfulness, FD and CLIP score"),
    ("export",): ("t2i.export", "write an inference-only model folder with a model card (or a Space)"),
}


# Packages of the optional extras (pyproject.toml), by import name: a command that needs one
# that is missing says which extra to install instead of failing with a traceback.
EXTRA_OF_PACKAGE: dict[str, str] = {
    "accelerate": "train", "tensorboard": "train",
    "torchmetrics": "eval", "matplotlib": "eval", "tqdm": "eval", "pyarrow": "eval", "yaml": "eval", "tomli": "eval",
    "gradio": "app", "gradio_client": "app", "rich": "app",
    "huggingface_hub": "hub",
}
# The extra a command group is installed with ([train] includes [eval]).
EXTRA_OF_COMMAND = {"train": "train", "encode": "train", "data": "train", "eval": "eval", "serve": "app",
                    "live": "app", "export": "hub"}


def missing_extra_message(package: str, command: str) -> str | None:
    """"t2i train needs accelerate: pip install 't2i[train]'" for a missing optional package."""
    extra = EXTRA_OF_PACKAGE.get(package)
    if extra is None:
        return None
    if EXTRA_OF_COMMAND.get(command) in ("train", "eval") and extra in ("train", "eval"):
        extra = EXTRA_OF_COMMAND[command]
    return f"t2i {command} needs {package}, which is not installed: pip install 't2i[{extra}]'"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t2i", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, (module_name, help_text) in COMMANDS.items():
        if len(words) == 1:
            sub = top.add_parser(words[0], help=help_text, description=help_text)
        else:
            if words[0] not in groups:
                group_parser = top.add_parser(words[0], help=f"{words[0]} subcommands")
                groups[words[0]] = group_parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
            sub = groups[words[0]].add_parser(words[1], help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        try:
            importlib.import_module(module_name).add_arguments(sub)
        except ModuleNotFoundError as e:
            if e.name == module_name:  # not built yet (tests/test_architecture.py checks all are)
                sub.set_defaults(_missing=f"{module_name} is not installed")
                continue
            if e.name and e.name.split(".")[0] == "t2i":
                raise
            # A subcommand whose optional dependency (e.g. the [app] extra) is missing still
            # shows in --help and explains itself when run.
            package = (e.name or "").split(".")[0]
            sub.set_defaults(_missing=missing_extra_message(package, words[0]) or str(e))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "_module"):
        parser.print_help()
        return 0 if argv is None or not argv else 2
    if getattr(args, "_missing", None):
        print(f"t2i: error: {args._missing}", file=sys.stderr)
        return 2
    try:
        return run_command(importlib.import_module(args._module).run, args)
    except ModuleNotFoundError as e:
        message = missing_extra_message((e.name or "").split(".")[0], args.command)
        if message is None:
            raise
        print(f"t2i: error: {message}", file=sys.stderr)
        return 2


def _version() -> str:
    from t2i import __version__

    return f"t2i {__version__}"


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":  # `python -m t2i.cli ...` (`python -m t2i ...` is the same command line)
    entry()
