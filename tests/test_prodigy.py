"""animad's sync-free Prodigy against prodigyopt 1.1.2: the same weights, no host syncs, exact resume.

A small net with a zero-initialised layer (as a LoRA's up matrix is) trains 20 steps on fixed data
with both optimizers, in fp32, for each option animad passes. The weights must agree to 1e-4
relative (+1e-6 absolute): the sums are reduced in another order and 20 steps of training amplify
that rounding. Measured: max |difference| 4e-7 with momentum (weights ~0.6), 3e-5 without momentum
(weights ~1.2, whose update divides the raw gradient), 1e-10 with bias correction.
"""

from __future__ import annotations

import contextlib
import copy
import io

import pytest
import torch
from prodigyopt import Prodigy as Reference
from torch.utils._python_dispatch import TorchDispatchMode

from animad.train.prodigy import Prodigy

STEPS = 20
RTOL, ATOL = 1e-4, 1e-6


class SyncCounter(TorchDispatchMode):
    """Counts the ops that read a device value back to the host (.item(), float(), bool() of a tensor),
    and all ops (a stand-in for kernel launches)."""

    def __init__(self):
        super().__init__()
        self.syncs = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            self.syncs += 1
        return func(*args, **(kwargs or {}))


def make_net(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4, bias=False),
                              torch.nn.Linear(4, 3))
    torch.nn.init.zeros_(net[2].weight)  # a LoRA up matrix starts at zero: prodigyopt's p0 is then a scalar
    return net


DATA = [(torch.randn(12, 8, generator=torch.Generator().manual_seed(i)),
         torch.randn(12, 3, generator=torch.Generator().manual_seed(100 + i))) for i in range(STEPS * 2)]


def groups(net, second_lr=None):
    params = list(net.parameters())
    if second_lr is None:
        return [{"params": params}]
    return [{"params": params[:3]}, {"params": params[3:], "lr": second_lr}]


def train(net, optimizer, steps, start=0, counter=None):
    for i in range(start, start + steps):
        x, y = DATA[i]
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(net(x), y).backward()
        with counter if counter is not None else contextlib.nullcontext():
            optimizer.step()


def build(kind, net, second_lr=None, **options):
    if kind == "reference":
        with contextlib.redirect_stdout(io.StringIO()):
            return Reference(groups(net, second_lr), **options)
    return Prodigy(groups(net, second_lr), **options)


def assert_same(a, b, rtol=RTOL, atol=ATOL):
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


OPTIONS = [dict(),  # animad's defaults
           dict(weight_decay=0.01, betas=(0.9, 0.99), d_coef=2.0),
           dict(use_bias_correction=True, safeguard_warmup=True, eps=1e-6, d_coef=10.0),
           dict(betas=(0.0, 0.999), weight_decay=0.1)]


@pytest.mark.parametrize("options", OPTIONS, ids=["defaults", "decay-dcoef", "bias-safeguard", "no-momentum"])
def test_matches_prodigyopt(options):
    ours_net, ref_net = make_net(), make_net()
    ours, ref = build("ours", ours_net, **options), build("reference", ref_net, **options)
    train(ours_net, ours, STEPS)
    train(ref_net, ref, STEPS)
    assert_same(ours_net, ref_net)
    ours.sync_to_groups()
    assert ours.param_groups[0]["d"] == pytest.approx(ref.param_groups[0]["d"], rel=1e-5)
    assert ours.param_groups[0]["d"] > 1e-5  # d grew: the comparison exercised the adaptation
    assert ours.param_groups[0]["k"] == ref.param_groups[0]["k"] == STEPS


def test_matches_prodigyopt_with_two_groups_and_the_lr_schedule():
    """Two groups (DiT and text-encoder LoRA), the LR changed between steps as LambdaLR does, and a
    step at lr 0 (the cooldown's end) that must change nothing."""
    ours_net, ref_net = make_net(), make_net()
    ours, ref = build("ours", ours_net, second_lr=0.0), build("reference", ref_net, second_lr=0.0)
    for i in range(STEPS):
        for optimizer in (ours, ref):
            optimizer.param_groups[0]["lr"] = 0.0 if i == STEPS - 1 else 1.0 - i / STEPS
        train(ours_net, ours, 1, start=i)
        train(ref_net, ref, 1, start=i)
    assert_same(ours_net, ref_net)


def test_no_host_sync_in_a_step():
    net = make_net()
    ours = build("ours", net, weight_decay=0.01, use_bias_correction=True)
    counter = SyncCounter()
    train(net, ours, 3, counter=counter)  # the first step (state set up) included
    assert counter.syncs == 0
    # prodigyopt reads two numbers back per parameter: what this replaces.
    ref_net = make_net()
    ref = build("reference", ref_net, weight_decay=0.01, use_bias_correction=True)
    train(ref_net, ref, 2)
    reference_counter = SyncCounter()
    train(ref_net, ref, 3, start=2, counter=reference_counter)
    assert reference_counter.syncs == 3 * 2 * len(list(ref_net.parameters()))


def saved(optimizer) -> dict:
    """Through torch.save and back on the CPU, as the resume state travels (train/checkpoint.py)."""
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=False)


def test_save_and_load_continue_bit_identically():
    options = dict(weight_decay=0.01, use_bias_correction=True)
    net = make_net()
    ours = build("ours", net, **options)
    train(net, ours, 7)
    state, weights = saved(ours), copy.deepcopy(net.state_dict())
    train(net, ours, 8, start=7)  # the run that was never stopped

    resumed_net = make_net(seed=1)
    resumed_net.load_state_dict(weights)
    resumed = build("ours", resumed_net, **options)
    resumed.load_state_dict(state)
    train(resumed_net, resumed, 8, start=7)
    for a, b in zip(net.parameters(), resumed_net.parameters()):
        assert torch.equal(a, b)


def test_a_resume_state_written_by_prodigyopt_continues_here():
    """A user's half-finished run from before the switch: its prodigyopt state is converted on load
    (same format; p0 of a zero-started weight expanded) and the run continues as prodigyopt would."""
    options = dict(weight_decay=0.01)
    ref_net = make_net()
    ref = build("reference", ref_net, **options)
    train(ref_net, ref, 10)
    state, weights = saved(ref), copy.deepcopy(ref_net.state_dict())
    assert state["state"][2]["p0"].dim() == 0  # the zero-started layer: prodigyopt's scalar p0
    train(ref_net, ref, 10, start=10)

    net = make_net(seed=1)
    net.load_state_dict(weights)
    ours = build("ours", net, **options)
    ours.load_state_dict(state)
    train(net, ours, 10, start=10)
    assert_same(net, ref_net)


class Allocations(TorchDispatchMode):
    """The largest tensor an op returns that it did not write in place (an allocation per step)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inplace = func._schema.name.endswith("_") or any(a.alias_info and a.alias_info.is_write
                                                         for a in func._schema.arguments)
        if not inplace:
            for tensor in out if isinstance(out, (list, tuple)) else [out]:
                if isinstance(tensor, torch.Tensor):
                    self.largest = max(self.largest, tensor.numel())
        return out


def test_a_step_allocates_nothing_the_size_of_a_parameter():
    """After the first step (which makes the state and the scratch), every intermediate is written in
    place: on the CPU a fresh parameter-sized list per intermediate made a step 4x prodigyopt's."""
    net = make_net()
    ours = build("ours", net, weight_decay=0.01, use_bias_correction=True, safeguard_warmup=True)
    train(net, ours, 1)
    counter = Allocations()
    train(net, ours, 2, start=1, counter=counter)
    largest_parameter = max(p.numel() for p in net.parameters())
    assert counter.largest < largest_parameter, counter.largest
