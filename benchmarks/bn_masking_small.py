"""Indicative check of [cheng2021 Tables 6.1, 6.2] at small scale (not the done-means run): small_cnn_bn width 16
on 2,000 embedded MNIST images (2 epochs; BN fine-tuning 1 epoch), Linf 0.1, PGD-20 on 200 test images.
Run from the repository root: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bn_masking_small.py"""
import sys, time, torch
sys.path.insert(0, "tests")
from test_recipes import subset, tcfg, _robust
from conftest import mnist_cfg
from robench.data import load_dataset
from robench.models import build_model
from robench.models.conditional_bn import set_code
from robench.registry import DEFENSES
from robench.training.loop import train
torch.set_num_threads(1)
t0 = time.time()
small = subset(load_dataset(mnist_cfg()), 2000, 200)
cpu = torch.device("cpu")
def fresh():
    torch.manual_seed(0); return build_model("small_cnn_bn", small, {"depth": 2, "width": 16})
nat = fresh(); train(nat, DEFENSES.get("none")(), small, tcfg(epochs=2, batch_size=50, lr=3e-3), cpu, seed=0, progress=False)
at = fresh(); train(at, DEFENSES.get("pgd_at")(eps=0.1, steps=3, warmup_epochs=0.5), small, tcfg(epochs=2, batch_size=50, lr=3e-3), cpu, seed=0, progress=False)
print("none", _robust(nat, small, 0.1)["clean_accuracy"], _robust(nat, small, 0.1)["robust_accuracy"], flush=True)
print("pgd_at", _robust(at, small, 0.1)["clean_accuracy"], _robust(at, small, 0.1)["robust_accuracy"], flush=True)
for name, base, params in (("bn_finetune", nat, {"eps": 0.1, "steps": 3}), ("bn_finetune_std", at, {"eps": 0.1})):
    rec = DEFENSES.get(name)(**params)
    m = build_model("small_cnn_bn", small, {"depth": 2, "width": 16}); m.load_state_dict(base.state_dict())
    m = rec.prepare_model(m)
    train(m, rec, small, tcfg(epochs=1, batch_size=50, lr=3e-3), cpu, seed=0, progress=False)
    for p in (1.0, 0.8, 0.6, 0.4, 0.2, 0.0):
        set_code(m, torch.tensor([p, 1 - p]))
        r = _robust(m, small, 0.1)
        print(name, "p", p, "clean", r["clean_accuracy"], "robust", r["robust_accuracy"], flush=True)
print("seconds", time.time() - t0)
