"""The network inside nnU-Net's wrappers, for every trainer of this package.

nnU-Net wraps ``self.network`` as ``torch.compile(net)`` (an ``OptimizedModule``, the module under
``._orig_mod``) and then, with ``-num_gpus``, as ``DDP(...)`` (under ``.module``); the predictor may compile the
network it was given. Attributes of our networks (the modality selection, the text table, the classifier) live on
the innermost module, and checkpoints hold its state_dict, so every hook reaches it through this one function.
"""
from __future__ import annotations

from torch import nn
from torch._dynamo import OptimizedModule


def unwrap_network(network: nn.Module) -> nn.Module:
    """The module itself, without DDP / torch.compile wrappers, nested in either order."""
    while True:
        if isinstance(network, nn.parallel.DistributedDataParallel):
            network = network.module
        elif isinstance(network, OptimizedModule):
            network = network._orig_mod
        else:
            return network

