import torch

from robench.evaluation.engine import choose_targets


def test_random_targets_are_seeded_uniform_and_never_the_label():
    y = torch.arange(10).repeat(500)
    logits = torch.zeros(len(y), 10)
    a = choose_targets("random", y, logits, 10, torch.Generator().manual_seed(3))
    b = choose_targets("random", y, logits, 10, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and (a != y).all() and a.min() >= 0 and a.max() <= 9
    counts = torch.bincount(a, minlength=10).float()
    assert counts.min() > 0.8 * counts.mean()  # every class used about equally


def test_least_likely_and_fixed_targets():
    y = torch.tensor([0, 1, 2])
    logits = torch.tensor([[5.0, 1.0, -3.0], [0.0, 2.0, 1.0], [-1.0, 0.0, 4.0]])
    assert choose_targets("least_likely", y, logits, 3, torch.Generator()).tolist() == [2, 0, 0]
    assert choose_targets(1, y, logits, 3, torch.Generator()).tolist() == [1, 1, 1]
