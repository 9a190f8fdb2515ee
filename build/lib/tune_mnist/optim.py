"""Adam, AdamW and SGD over a population's stacked parameters, each member with its own lr and weight decay.

torch.optim takes one learning rate per tensor, but a population's members lie along its tensors' first axis;
here each hyperparameter is an (R,) tensor broadcast over a member's entries. Member r's update is
torch.optim.Adam's (or SGD's) for its slice, so a member trains as it would alone. Where the Triton kernels
run, Adam's dense weights are updated inside their layer's backward (kernels.adam.grad_and_adam, asked
through `fused`) and every other parameter by one kernel a tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tune_mnist import kernels
from tune_mnist.kernels import adam as adam_kernels


def trim(saved: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A saved stacked tensor cut to the shape of `like`: a checkpoint of a population that has let members go may be
    padded wider than the members left need, and the padding beyond is zero."""
    return saved[tuple(slice(0, n) for n in like.shape)]

KINDS = ("adam", "adamw", "sgd")


class Optimizer:
    def __init__(self, params: dict[str, torch.Tensor], kind: str, lr: Sequence[float],
                 weight_decay: Sequence[float], momentum: float = 0.0, dense: Sequence[str] = (),
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if kind not in KINDS:
            raise ValueError(f"unknown optimizer {kind!r}; choose from {', '.join(KINDS)}")
        device = next(iter(params.values())).device
        self.params, self.kind, self.momentum, self.betas, self.eps = params, kind, momentum, betas, eps
        self.lr = torch.tensor(lr, device=device, dtype=torch.float32)
        self.weight_decay = torch.tensor(weight_decay, device=device, dtype=torch.float32)
        self.kernels = kind != "sgd" and kernels.available(device)
        self.decays = bool(self.weight_decay.any())
        # Adam's step count lives on the device where a CUDA graph replays the step (its bias corrections read it);
        # SGD only asks whether it is the first step, which a replay never is
        on_device = kind != "sgd" and (self.kernels or device.type == "cuda")
        self.step_count: torch.Tensor | int = torch.zeros((), device=device) if on_device else 0
        self.fused = {id(params[name]): name for name in dense} if self.kernels else {}
        self.state: dict[str, dict[str, torch.Tensor]] = {"m": {}, "v": {}, "buf": {}}
        for name, p in params.items():
            if kind == "sgd":
                if momentum:
                    self.state["buf"][name] = torch.zeros_like(p)
            else:
                self.state["m"][name], self.state["v"][name] = torch.zeros_like(p), torch.zeros_like(p)

    def __repr__(self) -> str:
        return f"Optimizer({self.kind}, {len(self.lr)} members, {len(self.params)} tensors)"

    def per_member(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(R,) values shaped to broadcast over a stacked (R, ...) tensor."""
        return values.view(-1, *[1] * (like.dim() - 1))

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def fused_step(self, weight: torch.Tensor, grad: torch.Tensor, h: torch.Tensor) -> bool:
        """Updates a dense weight from its layer's output gradient and input, if the kernel takes it."""
        name = self.fused.get(id(weight))
        if name is None:
            return False
        adam_kernels.grad_and_adam(weight, self.state["m"][name], self.state["v"][name], self.step_count, self.lr,
                                   self.weight_decay, grad, h, self.betas, self.eps, self.kind == "adamw")
        return True

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        for name, p in self.params.items():
            if p.grad is None:  # a fused dense weight, updated in the backward
                continue
            if self.kind == "sgd":
                self.sgd(name, p)
            elif self.kernels:
                adam_kernels.adam(p, p.grad, self.state["m"][name], self.state["v"][name], self.step_count, self.lr,
                                  self.weight_decay, self.betas, self.eps, self.kind == "adamw")
            else:
                self.adam(name, p)

    def adam(self, name: str, p: torch.Tensor) -> None:
        """torch.optim.Adam's single-tensor update, per member."""
        beta1, beta2 = self.betas
        lr, wd, grad = self.per_member(self.lr, p), self.per_member(self.weight_decay, p), p.grad
        m, v, t = self.state["m"][name], self.state["v"][name], self.step_count
        if self.decays and self.kind == "adamw":
            p.mul_(1 - lr * wd)
        elif self.decays:
            grad = torch.addcmul(grad, p, wd)
        m.lerp_(grad, 1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (v.sqrt() / (1 - beta2 ** t) ** 0.5).add_(self.eps)
        p.addcdiv_(m, denom.div_(lr / (1 - beta1 ** t)), value=-1)

    def sgd(self, name: str, p: torch.Tensor) -> None:
        """torch.optim.SGD's update (momentum without dampening), per member."""
        grad = torch.addcmul(p.grad, p, self.per_member(self.weight_decay, p)) if self.decays else p.grad
        if self.momentum:
            buf = self.state["buf"][name]
            grad = buf.copy_(grad) if self.step_count == 1 else buf.mul_(self.momentum).add_(grad)
        p.sub_(grad * self.per_member(self.lr, p))

    def keep(self, members: torch.Tensor) -> None:
        """Only these members (indices along the first axis) stay, with their state; params are the new stacks."""
        self.lr, self.weight_decay = self.lr[members], self.weight_decay[members]
        self.decays = bool(self.weight_decay.any())
        for states in self.state.values():
            for name in states:
                states[name] = states[name][members].contiguous()

    def rebind(self, params: dict[str, torch.Tensor]) -> None:
        """Points the optimizer at new stacked tensors of the same names (after a population kept some members)."""
        self.fused = {id(params[name]): name for name in self.fused.values()}
        self.params = params

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step_count, "lr": self.lr, "weight_decay": self.weight_decay, **self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.lr.device
        if isinstance(self.step_count, torch.Tensor):
            self.step_count = torch.as_tensor(state["step"], dtype=torch.float32, device=device).clone()
        else:
            self.step_count = int(state["step"])
        self.lr, self.weight_decay = state["lr"].to(device), state["weight_decay"].to(device)
        self.decays = bool(self.weight_decay.any())
        for kind in self.state:
            self.state[kind] = {k: trim(v, self.params[k]).to(device).contiguous() for k, v in state[kind].items()}
