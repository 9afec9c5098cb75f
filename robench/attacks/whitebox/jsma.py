from __future__ import annotations

import math

import torch

from robench.attacks.base import Attack, AttackView, keep_active
from robench.errors import RobenchError
from robench.geometry import L0_THRESHOLD, positions
from robench.registry import ATTACKS

#: pair maps of at most this many entries are built at once (samples are chunked to stay under it)
PAIR_ELEMENTS = 1 << 23


@ATTACKS.register("jsma")
class JSMA(Attack):
    """The Jacobian-based saliency map attack (Papernot, McDaniel, Jha, Fredrikson, Celik and Swami
    [papernot2016jsma §III]), targeted, white-box, L0.

    Paper: The limitations of deep learning in adversarial settings (EuroS&P 2016),
    https://arxiv.org/abs/1511.07528. Distance: L0 (``budget.norm=l0``: positions, a pixel across its
    channels). Arguments: ``theta`` (the change applied to each chosen feature, in units of the box's
    width: +1 sets it to the top of the box, the paper's MNIST setting; negative values decrease
    features, the paper's Algorithm 3 with the inequalities reversed) and ``gamma`` (the largest
    fraction of positions that may change, 0.145: the paper's 14.5% for MNIST). Usage:
    ``robench attack attack=jsma budget=l0_24 budget.targeted=true``.

    Each iteration ([papernot2016jsma Alg. 3], the saliency map over feature pairs of §III-B):

    * the forward derivative's two rows the map needs come from the oracle as two gradient rows per
      sample: ``a = d Z_t / d x`` (the target's logit) and ``b = d sum_{j != t} Z_j / d x`` (the
      other logits). Logits, not softmax outputs: the softmax's rows sum to a constant, which makes
      ``b = -a`` (the authors' code, cleverhans, differentiates the logits too);
    * over pairs (p, q) of features in the search domain, ``alpha = a_p + a_q``, ``beta = b_p + b_q``;
      the pair kept maximises ``-alpha beta`` among those with ``alpha > 0`` and ``beta < 0``
      (``theta > 0``; reversed for ``theta < 0``); both features move by ``theta`` (clipped to the box);
    * the search domain starts with the features that can move in ``theta``'s direction by more than
      ``min_room`` (default 0.01) of the box's width, and a feature leaves it once it is that close to
      the box's edge. The paper's domain is "not at the edge" (and cleverhans tests ``x < clip_max``);
      robench follows torchattacks' cutoff (``x < 0.99``) instead, deliberately: MNIST's strokes hold
      many pixels at 254/255, whose large gradients win the saliency map although moving them changes
      almost nothing and spends an L0 position (measured on 100 MNIST images against torchattacks,
      benchmarks/README.md: 54% success with ``min_room=0``, the paper's domain, against torchattacks' 66%).
      When no pair is admissible the paper has no rule;
      the authors' cleverhans code (and torchattacks) then take the argmax of an all-zero map, i.e.
      move the first feature; robench moves the first feature of the search domain alone, which changes
      the network's activation pattern and so its next saliency map. The run of a sample ends when it
      succeeds (the oracle's judgement), when the search domain is empty, or when no feature fits the
      number of positions allowed: ``min(budget.eps, floor(gamma * positions))`` (``gamma`` alone with
      ``budget.eps=null``).

    Untargeted runs (robench's reading; the paper is targeted): the same map with the label in the
    target's place and the inequalities reversed (``alpha < 0``, ``beta > 0`` for ``theta > 0``): the
    pair that lowers the label's logit most while raising the others.

    Queries: 2 gradient rows per iteration and active sample (times ``eot_samples``); a sample with fewer
    left stops. The pair map costs ``features^2`` memory per sample, so samples are processed in chunks
    of at most :data:`PAIR_ELEMENTS` entries (compute only; the oracle call stays one per iteration).
    """

    access = "gradient"
    norms = ("l0",)

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"theta": "[-1,1]", "gamma": "(0,1]", "min_room": "[0,1)"}

    def __init__(self, theta: float = 1.0, gamma: float = 0.145, min_room: float = 0.01):
        if theta == 0 or not -1 <= theta <= 1 or not 0 < gamma <= 1:
            raise RobenchError(f"jsma needs theta in [-1, 1] other than 0 and gamma in (0, 1] (got {theta}, {gamma})")
        if not 0 <= min_room < 1:
            raise RobenchError(f"jsma min_room must be in [0, 1) (a fraction of the box's width), got {min_room}")
        self.theta, self.gamma, self.min_room = float(theta), float(gamma), float(min_room)

    def run(self, oracle: AttackView, generator: torch.Generator) -> None:
        idx = oracle.active_indices()
        if len(idx) == 0:
            return
        x0, y, t = oracle.x0, oracle.y, oracle.targets
        lo, hi, dev = oracle.low, oracle.high, x0.device
        n = x0.shape[0]
        c = x0.shape[1] if x0.dim() > 2 else 1
        nfeat = x0[0].numel()
        npos = nfeat // c
        limit = math.floor(self.gamma * npos)
        if oracle.eps is not None:
            limit = min(limit, int(oracle.eps))
        if limit < 1:
            return
        cls = (t if t is not None else y)
        up = self.theta > 0
        sign = 1.0 if t is not None else -1.0   # untargeted: the label's logit must fall
        step = self.theta * (hi - lo)
        per_iter = 2 * oracle.eot_samples
        pos_of = torch.arange(nfeat, device=dev) % npos   # features are channel-major: f = channel * npos + position
        same_pos = pos_of[:, None] == pos_of[None, :]
        eye = torch.eye(nfeat, dtype=torch.bool, device=dev)
        x = x0.reshape(n, nfeat).clone()
        x0f = x0.reshape(n, nfeat)
        margin = self.min_room * (hi - lo)
        domain = (x < hi - margin) if up else (x > lo + margin)

        def loss_fn(logits, rows):
            # rows come in pairs per sample: even rows the class's logit, odd rows the sum of the others
            k = cls[rows]
            own = logits.gather(1, k[:, None]).squeeze(1)
            others = logits.sum(1) - own
            even = (torch.arange(len(rows), device=logits.device) % 2) == 0
            return torch.where(even, own, others)

        while True:  # an iteration needs its two gradient rows and one query in reserve to judge its last point
            idx, = keep_active(oracle, idx, mask=oracle.remaining[idx] >= per_iter + 1)
            if len(idx) == 0:
                return
            m = len(idx)
            rows = idx.repeat_interleave(2)
            xr = x[idx].repeat_interleave(2, 0).view(2 * m, *x0.shape[1:])
            _, g = oracle.gradient(xr, loss_fn, rows)
            g = g.reshape(m, 2, nfeat)
            a, b = sign * g[:, 0], g[:, 1]
            if t is None:
                b = -b   # untargeted: the same conditions as targeted with the roles of the sums reversed
            changed = positions((x[idx] - x0f[idx]).view(m, c, npos)) > L0_THRESHOLD  # (m, npos): the referee's L0
            used = changed.sum(1)
            p, q, ok = self._best_pairs(a, b, domain[idx], changed, used, limit, pos_of, same_pos, eye, up)
            # no admissible pair: the first feature of the search domain alone moves (see the docstring)
            dom = domain[idx]
            room = (used < limit)[:, None] | changed[:, pos_of]
            first = (dom & room).float().argmax(1)
            kick = ~ok & (dom & room).any(1)
            p = torch.where(ok, p, first)
            q = torch.where(ok, q, first)
            go_mask = ok | kick
            go = idx[go_mask]
            if len(go) == 0:
                return
            p, q = p[go_mask], q[go_mask]
            xs = x[go]
            ar = torch.arange(len(go), device=dev)
            xs[ar, p] = (xs[ar, p] + step).clamp(lo, hi)
            xs[ar, q] = torch.where(q != p, (xs[ar, q] + step).clamp(lo, hi), xs[ar, q])
            x[go] = xs
            dom = domain[go]
            sat = (xs >= hi - margin) if up else (xs <= lo + margin)
            domain[go] = dom & ~sat
            # the new points are judged by the next gradient call (its forward pass is the oracle's);
            # a sample that cannot pay another iteration gets one label query to judge its last point
            last = oracle.remaining[go] < per_iter + 1
            if bool(last.any()):
                gl = go[last]
                oracle.labels(x[gl].view(len(gl), *x0.shape[1:]), gl)
            idx = go

    def _best_pairs(self, a, b, domain, changed, used, limit, pos_of, same_pos, eye, up):
        """Per sample the admissible pair (p, q) maximising ``-alpha beta``; ok False where none is."""
        m, nfeat = a.shape
        chunk = max(1, PAIR_ELEMENTS // (nfeat * nfeat))
        ps, qs, oks = [], [], []
        for s in range(0, m, chunk):
            aa, bb = a[s:s + chunk], b[s:s + chunk]
            alpha = aa[:, :, None] + aa[:, None, :]
            beta = bb[:, :, None] + bb[:, None, :]
            adm = (alpha > 0) & (beta < 0) if up else (alpha < 0) & (beta > 0)
            dom = domain[s:s + chunk]
            adm &= dom[:, :, None] & dom[:, None, :] & ~eye
            # positions the pair would add: at most the room left under the limit
            new = ~changed[s:s + chunk][:, pos_of]                                   # (k, nfeat)
            room = (limit - used[s:s + chunk])[:, None, None]
            two = new[:, :, None] & new[:, None, :] & ~same_pos                        # adds two positions
            some = new[:, :, None] | new[:, None, :]                                   # adds at least one
            adm &= (room >= 2) | ((room == 1) & ~two) | ~some
            score = torch.where(adm, -alpha * beta, torch.full_like(alpha, -1.0))
            best = score.flatten(1).argmax(1)
            ok = score.flatten(1).gather(1, best[:, None]).squeeze(1) > 0
            ps.append(best // nfeat)
            qs.append(best % nfeat)
            oks.append(ok)
        return torch.cat(ps), torch.cat(qs), torch.cat(oks)
