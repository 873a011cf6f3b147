"""Run train.py under FSDP2 on CPU processes (gloo), for tests: `accelerate launch --use_fsdp --fsdp_version 2 ...
tests/fsdp_on_cpu.py TRAIN_ARGS` with ACCELERATE_USE_CPU=1.

torch's FSDP2 (`fully_shard`) shards on CPU processes over gloo, but Accelerate 1.15 turns FSDP on only for accelerator
process groups (its state checks MULTI_GPU, MULTI_XPU, ... and not MULTI_CPU), so on a machine without a GPU the launch
quietly becomes DDP. This lifts that one check: after Accelerate has built its state, a MULTI_CPU state with an FSDP
plugin is made FSDP, as a GPU launch would be. Everything else (Accelerate's FSDP2 prepare, its sharded save_state and
load_state, get_state_dict, train.py's own FSDP code) runs unchanged.
"""

from __future__ import annotations

import functools
import runpy
import sys
from pathlib import Path

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__


@functools.wraps(_init)
def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs) -> None:
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        # every later AcceleratorState() copies PartialState's fields over its own, distributed_type included
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = fsdp_plugin


if __name__ == "__main__":
    AcceleratorState.__init__ = _fsdp_on_cpu
    train = Path(__file__).resolve().parents[1] / "train.py"
    sys.argv[0] = str(train)
    runpy.run_path(str(train), run_name="__main__")
