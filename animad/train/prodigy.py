"""Prodigy (Mishchenko & Defazio) without host syncs: the same maths as prodigyopt 1.1.2, on whole lists.

prodigyopt loops over the parameters in Python and reads two numbers back per parameter (`.item()`
of a dot product and of an L1 norm): on the full Anima LoRA that is 1,120 device syncs and thousands
of kernel launches per step. Here every per-parameter update is a `torch._foreach_*` call over the
parameter list, the two sums are reduced on the device, and Prodigy's step-size estimate d, its
maximum, its running numerator and the step count k stay 0-dim float64 tensors on the parameters'
device. A step never reads anything back to the host.

What prodigyopt does for the options animad uses (decoupled weight decay, betas, eps, d_coef,
safeguard_warmup, use_bias_correction, d0 1e-6, growth_rate inf, slice_p 1, no FSDP), this does too,
including its quirks: the first-moment and s updates happen even on a step whose gradients are all
zero, while that step leaves the weights, d and k alone; a step at lr 0 does nothing. The only
differences are rounding: the dot products and norms are summed in another order (and d's running
sums in float64 on the device instead of Python floats). tests/test_prodigy.py bounds them.

Nothing is allocated per step: every intermediate of the size of the parameters (p0 - p and its
products with the gradients, the scaled gradients, the denominators, the weight-decay and Adam
updates) is written into two flat scratch buffers made once per parameter list, in place, with the
same elementwise operations in the same order as before, so the numbers are bit-for-bit those of the
allocating version. On the CPU a fresh 23M-element list per intermediate (page faults on every step)
and a concatenation for the dot product cost four times prodigyopt's step; bench/prodigy_step.py
measures both.

state_dict() writes d, d_max, d_numerator and k back into the param groups as Python numbers (one
sync, at save time only), which is prodigyopt's own format: a resume state written by prodigyopt loads
here (its flat s and p0 are reshaped, a scalar p0 of an all-zero parameter expanded), and a save/load round trip continues
bit-identically.
"""

from __future__ import annotations

import math

import torch

SCALARS = ("d", "d_max", "d_numerator", "k")


def scalar(value: torch.Tensor, like: list[torch.Tensor]) -> torch.Tensor:
    """A device scalar cast to the dtype of the list it scales: the foreach kernels' fast path wants
    that (prodigyopt's Python-float alphas are rounded to the tensors' dtype inside the kernels too)."""
    return value.to(like[0].dtype)


def scaled(out: list[torch.Tensor], tensors: list[torch.Tensor], factor: torch.Tensor) -> list[torch.Tensor]:
    """tensors * factor written into `out` (the same rounding as the allocating _foreach_mul)."""
    torch._foreach_copy_(out, tensors)
    torch._foreach_mul_(out, factor)
    return out


class Prodigy(torch.optim.Optimizer):
    def __init__(self, params, lr=1.0, betas=(0.9, 0.999), beta3=None, eps=1e-8, weight_decay=0.0, decouple=True,
                 use_bias_correction=False, safeguard_warmup=False, d0=1e-6, d_coef=1.0, growth_rate=float("inf")):
        if not decouple:
            raise ValueError("this Prodigy implements decoupled weight decay only (what animad uses)")
        if not (d0 > 0 and lr >= 0 and eps > 0 and 0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid Prodigy settings: lr {lr}, betas {betas}, eps {eps}, d0 {d0}")
        defaults = dict(lr=lr, betas=tuple(betas), beta3=beta3, eps=eps, weight_decay=weight_decay, d=d0, d0=d0,
                        d_max=d0, d_numerator=0.0, d_coef=d_coef, k=0, growth_rate=growth_rate,
                        use_bias_correction=use_bias_correction, decouple=True, safeguard_warmup=safeguard_warmup,
                        fsdp_in_use=False, slice_p=1)
        super().__init__(params, defaults)
        self._scalars: dict[str, torch.Tensor] | None = None  # the device copies of d, d_max, d_numerator, k
        self._scratch: dict[tuple, tuple] = {}  # parameter list -> (flat, views) x 2, made once

    # ---- the device-side scalars and their host mirror in the param groups -------------------------

    def scalars(self, device: torch.device) -> dict[str, torch.Tensor]:
        """d, d_max, d_numerator and k as float64 tensors on `device`, made from the groups' numbers once."""
        if self._scalars is None or self._scalars["d"].device != device:
            group = self.param_groups[0]
            self._scalars = {name: torch.tensor(float(group[name]), dtype=torch.float64, device=device)
                             for name in SCALARS}
        return self._scalars

    def d_tensor(self) -> torch.Tensor | None:
        """The current d on the device (read it with float() only when it is worth a sync)."""
        return None if self._scalars is None else self._scalars["d"]

    def sync_to_groups(self) -> None:
        """Copy the device scalars into every param group as Python numbers (one host sync)."""
        if self._scalars is None:
            return
        values = torch.stack([self._scalars[name] for name in SCALARS]).tolist()
        for group in self.param_groups:
            for name, value in zip(SCALARS, values):
                group[name] = int(value) if name == "k" else value

    def state_dict(self):
        self.sync_to_groups()
        return super().state_dict()

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._scalars = None  # rebuilt from the loaded groups' numbers at the next step
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                state.pop("step", None)  # prodigyopt's per-parameter counter: nothing reads it
                # prodigyopt keeps s and p0 flattened, and p0 as a scalar 0 for a parameter that started at 0.
                if state["p0"].dim() == 0:
                    state["p0"] = state["p0"].expand_as(p).clone()
                state["p0"], state["s"] = state["p0"].reshape(p.shape), state["s"].reshape(p.shape)

    # ---- the step ----------------------------------------------------------------------------------

    def with_grads(self, group) -> list[torch.Tensor]:
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            state = self.state[p]
            if "p0" not in state:
                state["s"] = torch.zeros_like(p, memory_format=torch.preserve_format).detach()
                state["p0"] = p.detach().clone()  # full copy even when p is all zero: no sync to test that
                if group["betas"][0] > 0:
                    state["exp_avg"] = torch.zeros_like(p).detach()
                state["exp_avg_sq"] = torch.zeros_like(p).detach()
        return params

    def lists(self, params, *names):
        return [[self.state[p][name] for p in params] for name in names]

    def scratch(self, params) -> tuple[tuple[torch.Tensor, list[torch.Tensor]], ...]:
        """Two flat buffers the size of `params`, each with one view per parameter (in order, so a sum
        over a flat buffer adds the same numbers in the same order as a concatenation would)."""
        key = tuple(id(p) for p in params)
        if key not in self._scratch:
            total = sum(p.numel() for p in params)
            buffers = []
            for _ in range(2):
                flat = torch.empty(total, dtype=params[0].dtype, device=params[0].device)
                views, offset = [], 0
                for p in params:
                    views.append(flat[offset:offset + p.numel()].view_as(p))
                    offset += p.numel()
                buffers.append((flat, views))
            self._scratch[key] = tuple(buffers)
        return self._scratch[key]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        first = self.param_groups[0]
        beta1, beta2 = first["betas"]
        beta3 = first["beta3"] if first["beta3"] is not None else math.sqrt(beta2)
        lr = max(group["lr"] for group in self.param_groups)
        active = [(group, self.with_grads(group)) for group in self.param_groups]
        active = [(group, params) for group, params in active if params]
        if not active or lr == 0.0:
            return loss  # prodigyopt: nothing adds to d's denominator, so the step returns early
        for group, _ in active:
            if group["lr"] not in (lr, 0.0):
                raise RuntimeError("Prodigy supports one lr for all groups (others may only be 0)")
        device = active[0][1][0].device
        sc = self.scalars(device)
        d, d0 = sc["d"], first["d0"]
        if first["use_bias_correction"]:
            k1 = sc["k"] + 1
            bias_correction = (1 - beta2 ** k1) ** 0.5 / (1 - beta1 ** k1)
        else:
            bias_correction = 1.0
        dlr = d * lr * bias_correction
        dot_sum = torch.zeros((), dtype=torch.float64, device=device)
        denom_sum = torch.zeros((), dtype=torch.float64, device=device)

        # 1) the moments, s, and the two sums that estimate d (groups at lr 0 skip this, as in prodigyopt)
        for group, params in active:
            if group["lr"] <= 0.0:
                continue
            grads = [p.grad for p in params]
            p0s, ss = self.lists(params, "p0", "s")
            (flat, work), _ = self.scratch(params)
            torch._foreach_copy_(work, p0s)
            torch._foreach_sub_(work, params)  # p0 - p
            torch._foreach_mul_(work, grads)
            dot_sum = dot_sum + flat.sum()
            if beta1 > 0:
                (exp_avgs,) = self.lists(params, "exp_avg")
                torch._foreach_mul_(exp_avgs, beta1)
                torch._foreach_add_(exp_avgs, scaled(work, grads, scalar(d * (1 - beta1), grads)))
            (exp_avg_sqs,) = self.lists(params, "exp_avg_sq")
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, scaled(work, grads, scalar(d * d * (1 - beta2), grads)), grads)
            torch._foreach_mul_(ss, beta3)
            s_rate = (d / d0) * (d if group["safeguard_warmup"] else dlr)
            torch._foreach_add_(ss, scaled(work, grads, scalar(s_rate, grads)))
            denom_sum = denom_sum + torch.stack(torch._foreach_norm(ss, 1)).sum()

        # 2) the new d, kept only when some gradient was nonzero (prodigyopt returns early otherwise)
        progressed = denom_sum > 0
        numerator = sc["d_numerator"] * beta3 + (d / d0) * dlr * dot_sum
        d_hat = first["d_coef"] * numerator / torch.where(progressed, denom_sum, 1.0)
        grown = torch.where(d == d0, torch.maximum(d, d_hat), d)
        d_max = torch.maximum(sc["d_max"], d_hat)
        new_d = torch.minimum(d_max, grown * first["growth_rate"])
        step_size = torch.where(progressed, dlr, 0.0)  # the update uses the d from before this step
        sc["d_numerator"] = torch.where(progressed, numerator, sc["d_numerator"])
        sc["d_max"] = torch.where(progressed, d_max, sc["d_max"])
        sc["d"] = torch.where(progressed, new_d, d)
        sc["k"] = sc["k"] + progressed.to(torch.float64)
        new_d = sc["d"]

        # 3) the Adam step with the new d in the denominator, decoupled weight decay first. prodigyopt
        # divides by sqrt(v) + d*eps; adding a device scalar to a list syncs on the CPU, so this divides
        # by d * (sqrt(v)/d + eps) and folds that d into the step size (equal up to rounding).
        inverse_d = 1.0 / new_d
        for group, params in active:
            (exp_avg_sqs,) = self.lists(params, "exp_avg_sq")
            (_, denoms), (_, updates) = self.scratch(params)
            torch._foreach_copy_(denoms, exp_avg_sqs)
            torch._foreach_sqrt_(denoms)
            torch._foreach_mul_(denoms, scalar(inverse_d, denoms))
            torch._foreach_add_(denoms, group["eps"])
            if group["weight_decay"] != 0:
                torch._foreach_add_(params, scaled(updates, params, scalar(-group["weight_decay"] * step_size, params)))
            if beta1 > 0:
                (exp_avgs,) = self.lists(params, "exp_avg")
                torch._foreach_copy_(updates, exp_avgs)
                torch._foreach_div_(updates, denoms)
                torch._foreach_mul_(updates, scalar(-step_size * inverse_d, updates))
            else:
                torch._foreach_copy_(updates, [p.grad for p in params])
                torch._foreach_div_(updates, denoms)
                torch._foreach_mul_(updates, scalar(-step_size, updates))
            torch._foreach_add_(params, updates)
        return loss
