"""SGD, Adam and AdamW: torch.optim's arithmetic without its start-up cost."""

from __future__ import annotations

from typing import Optional

import torch

from gradfit.kernel import ABI as KERNEL_ABI  # noqa: F401 (tests and tools read it here)
from gradfit.kernel import usable as usable_kernel  # noqa: F401

# ---------------------------------------------------------------- optimizers


class OptimizerBase:
    """What the loop uses of a torch optimizer: ``param_groups``, ``state``, ``zero_grad``, ``step``,
    ``state_dict``/``load_state_dict`` (same layout as torch's)."""

    def __init__(self, params, defaults: dict):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        self.defaults = dict(defaults)
        self.param_groups = [dict(defaults, params=params)]
        self.state: dict = {}  # parameter -> its state (tensors)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_()
                    p.grad.zero_()

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                params = [p for p in group["params"] if p.grad is not None]
                if params:
                    self._update(group, params)
        return loss

    def _update(self, group: dict, params: list) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict:
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
            len(g["params"]) != len(mine["params"]) for g, mine in zip(groups, self.param_groups)
        ):
            raise ValueError("optimizer state does not match the parameters")
        by_index = {}
        for g, mine in zip(groups, self.param_groups):
            mine.update({k: v for k, v in g.items() if k != "params"})
            by_index.update(zip(g["params"], mine["params"]))
        self.state = {}
        for i, s in state_dict["state"].items():
            p = by_index[int(i)]
            self.state[p] = {
                k: (v.to(p.device) if k != "step" or self._step_on_device(p) else v.cpu()).clone()
                if torch.is_tensor(v) else v
                for k, v in s.items()
            }

    def _step_on_device(self, p) -> bool:
        return False


class SGD(OptimizerBase):
    """Stochastic gradient descent with momentum, Nesterov and weight decay, as ``torch.optim.SGD``."""

    def __init__(self, params, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        if nesterov and not momentum:
            raise ValueError("nesterov needs momentum > 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, dampening=0.0))

    def _update(self, group, params):
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        grads = [p.grad for p in params]
        if wd:
            grads = torch._foreach_add(grads, params, alpha=wd)
        if momentum:
            # First step: the buffer is the gradient itself; then buf = momentum * buf + grad.
            has = [("momentum_buffer" in self.state.get(p, {})) for p in params]
            if any(has):
                bufs = [self.state[p]["momentum_buffer"] for p, h in zip(params, has) if h]
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, [g for g, h in zip(grads, has) if h], alpha=1 - group["dampening"])
            for p, g, h in zip(params, grads, has):
                if not h:
                    self.state.setdefault(p, {})["momentum_buffer"] = g.detach().clone()
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            grads = torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] else bufs
        torch._foreach_add_(params, grads, alpha=-lr)


def _has_fused_adam(device: torch.device) -> bool:
    return device.type in ("cuda", "cpu") and hasattr(torch, "_fused_adam_")


class Adam(OptimizerBase):
    """Adam (``decoupled=True``: AdamW), as ``torch.optim.Adam``/``AdamW`` without amsgrad."""

    def __init__(
        self,
        params,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled: bool = False,
        fused: Optional[bool] = None,
    ):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.decoupled = decoupled
        devices = {p.device for p in self.param_groups[0]["params"]}
        dtypes = {p.dtype for p in self.param_groups[0]["params"]}
        self.fused = (
            (len(devices) == 1 and len(dtypes) == 1 and _has_fused_adam(next(iter(devices))))
            if fused is None
            else fused
        )

    def _step_on_device(self, p) -> bool:
        return self.fused

    def _step_counts(self, params) -> Optional[torch.Tensor]:
        """One tensor holding every parameter's step count (each state's "step" is a view of it), if there is one.

        Counting all steps with one op instead of ``_foreach_add_`` over 0-dim tensors saves
        tens of microseconds per step on the CPU, where a mini-batch step costs a few hundred.
        """
        counts = getattr(self, "_counts", None)
        group = self.param_groups[0]["params"]
        if counts is None and not self.state and len(self.param_groups) == 1:
            device = {p.device for p in group}
            if len(device) == 1:
                counts = self._counts = torch.zeros(len(group), dtype=torch.float32,
                                                    device=next(iter(device)) if self.fused else "cpu")
        if counts is None or len(params) != len(group) or any(a is not b for a, b in zip(params, group)):
            return None
        return counts

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._counts = None  # the loaded step counts are tensors of their own

    def _init_state(self, p):
        s = self.state.get(p)
        if not s:
            # torch keeps the step count as a float32 tensor: on the device for the fused kernel.
            counts = getattr(self, "_counts", None)
            if counts is not None:
                step = counts[next(i for i, q in enumerate(self.param_groups[0]["params"]) if q is p)]
            else:
                step = torch.zeros((), dtype=torch.float32, device=p.device if self.fused else "cpu")
            s = self.state[p] = {
                "step": step,
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }
        return s

    def _update(self, group, params):
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        counts = self._step_counts(params)
        states = [self._init_state(p) for p in params]
        grads = [p.grad for p in params]
        m = [s["exp_avg"] for s in states]
        v = [s["exp_avg_sq"] for s in states]
        steps = [s["step"] for s in states]
        if counts is not None and all(st._base is counts for st in steps):
            counts.add_(1)
        else:
            torch._foreach_add_(steps, 1)
        if self.fused:
            fn = torch._fused_adamw_ if self.decoupled else torch._fused_adam_
            fn(params, grads, m, v, [], steps, lr=lr, beta1=beta1, beta2=beta2, weight_decay=wd, eps=eps,
               amsgrad=False, maximize=False, grad_scale=None, found_inf=None)
            return
        # The foreach path of torch.optim.Adam, step by step.
        if wd:
            if self.decoupled:
                torch._foreach_mul_(params, 1 - lr * wd)
            else:
                grads = torch._foreach_add(grads, params, alpha=wd)
        torch._foreach_lerp_(m, grads, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, 1 - beta2)
        counts = [float(s) for s in steps]
        step_size = [-(lr / (1 - beta1**t)) for t in counts]
        bc2_sqrt = [(1 - beta2**t) ** 0.5 for t in counts]
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, m, denom, step_size)
