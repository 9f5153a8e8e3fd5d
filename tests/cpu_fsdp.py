"""``python -m tests.cpu_fsdp ARGS``: ``obliviate ARGS`` under accelerate's FSDP engine on CPU processes (gloo).

accelerate turns FSDP on only for accelerator devices (CUDA, XPU, ...): on CPU processes its state stays
MULTI_CPU and the FSDP plugin is dropped, although torch's FSDP2 (``fully_shard``) runs on CPU with gloo. This
wrapper marks accelerate's state as FSDP once accelerate has set it up, so that a test on a CPU machine takes the
path a GPU run takes: each decoder layer sharded, the optimizer over shards, the full state dict gathered to
save. Started by ``accelerate launch --config_file <an FSDP config> -m tests.cpu_fsdp unlearn ...``.
"""

import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_setup = AcceleratorState.__init__


def _setup_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _setup(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        # What accelerate does for GPU processes (accelerate/state.py, AcceleratorState.__init__).
        self.distributed_type = DistributedType.FSDP
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


AcceleratorState.__init__ = _setup_with_fsdp_on_cpu

if __name__ == "__main__":
    from obliviate.cli import main

    sys.exit(main(sys.argv[1:]))
