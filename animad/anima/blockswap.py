"""Block swap: keep the frozen weights of some DiT blocks in pinned CPU memory, bring each to the GPU
just before it runs, and prefetch the next one on a side stream while the current one computes.

This is what lets the 2B DiT train on an 8 GB card: a block's base weights are 138 MB in bf16 and
only two swapped blocks are on the GPU at a time (the one computing and the one arriving). The
LoRA parameters are not the block's parameters (they hang off its linears, train/lora.py), so they
never move and the optimizer never sees a weight change device.

Where the backward finds its weights: a swapped block is always checkpointed (AnimaDiT.must_checkpoint),
so its forward saves nothing that holds the weights, and the backward recomputes the block - which
calls the block again and so runs the same pre-hook that loads its weights. During the backward
(autograd has a current graph task), loading block i releases the swapped blocks after it, whose
backward is done, and prefetches the one before it. Without a GPU the "CPU copy" is a separate
CPU tensor, so the hook logic (which tensor a weight points at, when) is tested on the CPU.
"""

from __future__ import annotations

import torch
from torch import nn


def in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1


class SwappedBlock:
    """One block's frozen parameters: a CPU master each, and the device copy while resident."""

    def __init__(self, module: nn.Module, device: torch.device):
        self.params = list(module.parameters())
        self.device = device
        # Pinned (page-locked) so the copies to the GPU can run asynchronously on the side stream.
        pin = device.type == "cuda"
        self.masters = [torch.empty_like(p, device="cpu", pin_memory=pin).copy_(p.detach()) for p in self.params]
        self.incoming: list[torch.Tensor] | None = None
        self.arrived = None  # the side stream's event for `incoming`
        self.resident = False
        self.release()

    def fetch(self, stream) -> None:
        """Start copying the weights to the device (on `stream` when there is one)."""
        if self.resident or self.incoming is not None:
            return
        if stream is None:  # the CPU: a separate tensor stands in for the device copy
            self.incoming = [m.to(self.device, copy=True) for m in self.masters]
            return
        with torch.cuda.stream(stream):
            self.incoming = [m.to(self.device, non_blocking=True) for m in self.masters]
            self.arrived = torch.cuda.Event()
            self.arrived.record(stream)

    def load(self, stream) -> None:
        if self.resident:
            return
        self.fetch(stream)
        if self.arrived is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(self.arrived)
            for tensor in self.incoming:
                tensor.record_stream(current)  # made on the side stream, freed after the main stream's use
        for param, tensor in zip(self.params, self.incoming):
            param.data = tensor
        self.incoming, self.arrived, self.resident = None, None, True

    def release(self) -> None:
        for param, master in zip(self.params, self.masters):
            param.data = master
        self.incoming, self.arrived, self.resident = None, None, False


class BlockSwap:
    """Swap `indices` of `blocks` (an nn.ModuleList) between CPU and `device`, driven by module hooks."""

    def __init__(self, blocks: nn.ModuleList, indices: list[int], device: torch.device):
        self.order = sorted(indices)
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.swapped = {i: SwappedBlock(blocks[i], self.device) for i in self.order}
        self.handles = []
        for i in self.order:
            self.handles.append(blocks[i].register_forward_pre_hook(self.hook(self.before, i)))
            self.handles.append(blocks[i].register_forward_hook(self.hook(self.after, i)))

    @staticmethod
    def hook(method, index):
        def run(module, *args):
            method(index)
        # A compiled block runs its hooks inside the compiled call: keep them out of the graph (the
        # block's body stays one graph between them).
        return torch.compiler.disable(run)

    def neighbour(self, index: int, step: int) -> int | None:
        position = self.order.index(index) + step
        return self.order[position] if 0 <= position < len(self.order) else None

    def before(self, index: int) -> None:
        backward = in_backward()
        # Forward: every other block is done (or left over from the last backward). Backward: the
        # blocks after this one have finished their backward; those before it are still to come.
        for other, block in self.swapped.items():
            if other != index and (other > index if backward else True):
                block.release()
        self.swapped[index].load(self.stream)
        following = self.neighbour(index, -1 if backward else 1)
        if following is not None:
            self.swapped[following].fetch(self.stream)

    def after(self, index: int) -> None:
        if in_backward():
            return  # the recomputed block's backward runs next and needs its weights
        if torch.is_grad_enabled() and index == self.order[-1]:
            return  # the backward starts with this block: keep it rather than fetch it again at once
        self.swapped[index].release()

    def release_all(self) -> None:
        for block in self.swapped.values():
            block.release()

    def remove(self) -> None:
        """Stop swapping: every weight back on the device for good."""
        for handle in self.handles:
            handle.remove()
        for block in self.swapped.values():
            block.load(None)
        self.swapped.clear()


def swap_blocks(dit, count: int, device) -> BlockSwap | None:
    """Swap the last `count` blocks of an AnimaDiT (the ones the backward needs first stay warmest)."""
    if count <= 0:
        dit.must_checkpoint = set()
        return None
    indices = list(range(len(dit.blocks) - count, len(dit.blocks)))
    dit.must_checkpoint = set(indices)
    return BlockSwap(dit.blocks, indices, device)
