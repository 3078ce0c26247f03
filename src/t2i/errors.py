"""The errors `t2i` reports as one line instead of a traceback, and the exit code each gets.

At the bottom of the package: the training loop raises `TrainingInterrupted`, commands raise
`CLIError`, and both the command line and `t2i train all` (which runs the stages' commands)
turn them into exit codes with `run_command`.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2, no traceback."""


class TrainingInterrupted(Exception):
    """Raised after SIGINT/SIGTERM once the checkpoint is safely written."""

    def __init__(self, step: int, signum: int, checkpoint: Path | None):
        self.step, self.signum, self.checkpoint = step, signum, checkpoint
        super().__init__(
            f"interrupted by {signal.Signals(signum).name} at step {step}; checkpoint saved at "
            f"{checkpoint}. Run the same command again to resume."
        )


def run_command(run: Callable[..., int | None], args) -> int:
    """`run(args)`'s exit code, with the errors a user can act on printed as one line."""
    try:
        return int(run(args) or 0)
    except TrainingInterrupted as e:
        print(f"t2i: {e}", file=sys.stderr)
        return 128 + e.signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them
    except CLIError as e:
        print(f"t2i: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        # Our own code raises these with messages that name the bad path or value.
        print(f"t2i: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("t2i: interrupted", file=sys.stderr)
        return 130
