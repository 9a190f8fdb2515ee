"""Adam's kernels (fused into the dense layers' weight gradient, and for every other parameter) update 2 members of
different widths, lr and weight decay as the torch ops do, over 12 steps.

Run by tests under Triton's interpreter (TRITON_INTERPRET=1 must be set before a kernel is defined).
"""

from tune_mnist import data
from tune_mnist.optim import Optimizer
from tune_mnist.population import Member, Population
from tune_mnist.train import TrainConfig, Trainer, make_optimizer

splits = data.to_device(data.subset(data.load(), 512, 128), "cpu")
members = [Member({"family": "mlp", "widths": w, "activation": "tanh"}, seed=s, lr=lr, weight_decay=wd, corruption=p)
           for s, (w, lr, wd, p) in enumerate([([40, 24], 3e-3, 0.05, 0.0), ([16, 30], 1e-3, 0.0, 0.3)])]
for optimizer in ("adam", "adamw"):
    cfg = TrainConfig(epochs=2, batch_size=100, optimizer=optimizer)
    fused, plain, start = (Population(members, "cpu") for _ in range(3))
    kernel_opt = make_optimizer(fused, cfg)
    torch_opt = Optimizer(plain.params, optimizer, [m.lr for m in members], [m.weight_decay for m in members])
    torch_opt.kernels, torch_opt.fused, torch_opt.step_count = False, {}, 0  # torch ops only, as without Triton
    for pop, opt in ((fused, kernel_opt), (plain, torch_opt)):
        list(Trainer(pop, splits, cfg, opt).epochs())
    assert kernel_opt.fused and kernel_opt.kernels and not torch_opt.fused
    assert all(fused.params[k].grad is None for k in ("1.weight", "3.weight", "5.weight"))
    for k, w in fused.params.items():  # measured 1e-6-2e-5 of how far they moved
        moved = (plain.params[k] - start.params[k]).norm()
        assert (w - plain.params[k]).norm() < 1e-4 * moved, (optimizer, k)
