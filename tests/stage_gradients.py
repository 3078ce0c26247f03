"""Run `t2i train` stages through the command line and save the gradients of their first
optimizer step: the test of multi-process training runs this once as one process and once
under `torchrun --nproc_per_node 2`, then compares the files.

    python stage_gradients.py SPEC.json        # SPEC: {"grads_dir": ..., "runs": [{"label", "argv"}]}

Gradients are read where the optimizer steps, after DDP has averaged them across processes and
after gradient clipping, which is switched off here (`LoopConfig.grad_clip = 0`): clipping
rescales a gradient to a fixed norm and would hide a gradient that is off by a constant factor.
Each process writes GRADS_DIR/LABEL/rank<RANK>_opt<K>.safetensors (K: the stage's K-th
optimizer, in the order the loop builds them) with one tensor per parameter, keyed
"<group>.<index>" (a parameter without a gradient is left out).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from t2i.cli import main
from t2i.train.loop import LoopConfig

_label = {"name": "", "optimizers": 0}


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that saves the gradients it is first asked to step with."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._index = _label["optimizers"]
        _label["optimizers"] += 1
        self._recorded = False

    def step(self, closure=None):
        if not self._recorded:
            self._recorded = True
            grads = {f"{g}.{i}": p.grad.detach().float().contiguous().clone()
                     for g, group in enumerate(self.param_groups)
                     for i, p in enumerate(group["params"]) if p.grad is not None}
            out = Path(os.environ["T2I_GRADS_DIR"]) / _label["name"]
            out.mkdir(parents=True, exist_ok=True)
            save_file(grads, str(out / f"rank{os.environ.get('RANK', '0')}_opt{self._index}.safetensors"))
        return super().step(closure)


def _without_clipping(post_init):
    def patched(self):
        post_init(self)
        self.grad_clip = 0.0

    return patched


def run(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    os.environ["T2I_GRADS_DIR"] = spec["grads_dir"]
    torch.optim.AdamW = RecordingAdamW  # the loop builds its optimizers as torch.optim.AdamW(...)
    LoopConfig.__post_init__ = _without_clipping(LoopConfig.__post_init__)
    for item in spec["runs"]:
        _label.update(name=item["label"], optimizers=0)
        code = main(item["argv"])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
