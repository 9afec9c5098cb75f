from __future__ import annotations

import hashlib
import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from robench.attacks.base import AttackView, keep_active
from robench.attacks.score._common import ScoreAttack, ScoreTask, margin_loss, upsample
from robench.errors import RobenchError
from robench.registry import ATTACKS


class Codec(nn.Module):
    """AutoZOOM's convolutional autoencoder (the authors' code, ``setup_codec.py``, in PyTorch):
    ``levels`` times [3x3 conv (16) + activation + 2x2 max-pool], then a 3x3 conv back to C channels
    (the code: C x H/2^levels x W/2^levels); the decoder mirrors it with 2x upsampling and ends in a
    3x3 conv to C channels. ``levels`` is the code's ``compress_mode`` (1 for MNIST, 2 for CIFAR-10,
    3 for ImageNet); the activation ReLU (their MNIST setting) or tanh (CIFAR-10, ImageNet). Images are
    centred (x - 0.5), as their [-0.5, 0.5] images."""

    def __init__(self, channels: int, levels: int = 1, activation: str = "relu"):
        super().__init__()
        act = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]
        enc, dec = [], []
        c = channels
        for _ in range(levels):
            enc += [nn.Conv2d(c, 16, 3, padding=1), act(), nn.MaxPool2d(2)]
            c = 16
        enc += [nn.Conv2d(c, channels, 3, padding=1)]
        c = channels
        for _ in range(levels):
            dec += [nn.Conv2d(c, 16, 3, padding=1), act(), nn.Upsample(scale_factor=2)]
            c = 16
        dec += [nn.Conv2d(16, channels, 3, padding=1)]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of images in [0, 1] (centred inside)."""
        return self.decoder(self.encoder(x - 0.5)) + 0.5


#: trained codecs of this process, by (data fingerprint, settings): a sweep or the contract test trains each once
_CODECS: Dict[Tuple, Codec] = {}


def train_codec(images: torch.Tensor, levels: int, activation: str, epochs: int, seed: int,
                lr: float = 1e-3, batch_size: int = 128) -> Codec:
    """Train :class:`Codec` on ``images`` (N, C, H, W in [0, 1]) by Adam on the mean squared
    reconstruction error; deterministic for a seed (its own generators, the global RNG untouched).
    Cached per process by the images' bytes and the settings."""
    key = (hashlib.sha256(images.detach().cpu().contiguous().numpy().tobytes()).hexdigest(), tuple(images.shape),
           levels, activation, epochs, seed, lr, batch_size)
    if key in _CODECS:
        return _CODECS[key]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        codec = Codec(images.shape[1], levels, activation)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(codec.parameters(), lr=lr)
    x_all = images.detach().cpu().float()
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(x_all), generator=gen)
            for s in range(0, len(x_all), batch_size):
                xb = x_all[order[s:s + batch_size]]
                loss = F.mse_loss(codec(xb), xb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    codec.eval()
    for p in codec.parameters():
        p.requires_grad_(False)
    _CODECS[key] = codec
    return codec


@ATTACKS.register("autozoom")
class AutoZOOM(ScoreAttack):
    """AutoZOOM (Tu et al. [tu2019autozoom]; [zhao2020slides] "AutoZOOM: Scaled random full gradient
    estimation for efficient query", "Autoencoder for dimensional reduction of perturbations"),
    score-based, targeted or untargeted, Linf or L2 budget.

    The perturbation lives in the code space of an autoencoder: ``δ = D(z) - D(0)`` with D the decoder
    (``codec=ae``, AutoZOOM-AE) or a bilinear resize of a C x r x r tensor (``codec=bilinear`` with
    ``resize``, AutoZOOM-BiLIN). Each iteration, with f the objective below and z the code:

        g_j = b · (f(z + β u_j) - f(z)) / β · u_j        (u_j uniform on the unit sphere of the code space)
        ḡ  = (1 / q) Σ_{j=1..q} g_j                       [zhao2020slides], items (i)-(ii)

    then an Adam step on z (lr 0.01, betas 0.9 / 0.999). The objective is the authors' C&W-type loss on
    log-probabilities: ``f = ||x - x0||_2^2 + c · max(log p_y - max_{j!=y} log p_j, 0)`` untargeted,
    ``max(max_{j!=t} log p_j - log p_t, 0)`` targeted, at ``x = Π(x0 + δ)``, Π the projection onto the
    budget's ball and the input box (the view's [low, high]; robench's eps-bounded version: the authors minimise L2 distortion with
    no ball, as robench's ``zoo`` does with projection too). Both terms come from the q + 1 queried
    points, as in the authors' code.

    Defaults, from the authors' code (https://github.com/IBM/Autozoom-Attack; the slides give no
    values): q = 1 (``num_rand_vec``), b = q, β = 1 / d' (d' the code's dimension), c = 1 at first and
    c × 10 after every ``switch_iterations`` = 1,000 iterations without success (their dynamic
    switching before the first success; an eps-bounded robench run stops at the first success, so
    their post-success fine-tuning of c and q never happens), MNIST's codec (``levels`` 1: a 14x14x1
    code, ReLU). robench's choices: D(0) is subtracted so the attack starts at x0 (the authors start
    at D(0)); the autoencoder is trained by robench on the run's training split, as below.

    The autoencoder: trained in :meth:`prepare` on ``ae_images`` training images (null: all; drawn
    without labels, ``requires`` ``class_images``), Adam lr 1e-3, batches of 128, ``ae_epochs`` epochs of
    mean squared reconstruction error (the paper trains it on unlabeled training images; these
    optimiser settings are robench's), seeded by ``ae_seed``: the same data and settings give the same
    codec, once per process (cached). It is the attacker's own model; it never sees the victim, and
    training it costs no query.

    Queries: q + 1 per sample per iteration (the iterate and its q probes, one call); the iterate is
    what the oracle judges.
    """

    name = "autozoom"
    requires = ("class_images",)
    #: the contract test (robench.testing.contract_params): a smaller autoencoder training, same attack
    contract_overrides = {"ae_images": 500, "ae_epochs": 1}

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"q": ">=1", "lr": ">0", "const": ">0", "switch_iterations": ">=1", "levels": ">=1",
                    "ae_epochs": ">=1", "b": ">0", "ae_images": ">=1", "ae_seed": ">=0"}

    def __init__(self, codec: str = "ae", q: int = 1, b: Optional[float] = None, beta: Optional[float] = None,
                 lr: float = 0.01, const: float = 1.0, switch_iterations: int = 1000, resize: Optional[int] = None,
                 levels: int = 1, activation: str = "relu", ae_images: Optional[int] = None, ae_epochs: int = 10,
                 ae_seed: int = 0):
        if codec not in ("ae", "bilinear"):
            raise RobenchError(f"autozoom codec must be 'ae' or 'bilinear', got '{codec}'")
        if codec == "bilinear" and (resize is None or int(resize) < 1):
            raise RobenchError("autozoom codec=bilinear needs resize (the side of the C x r x r code), e.g. resize=14")
        if activation not in ("relu", "tanh"):
            raise RobenchError(f"autozoom activation must be 'relu' or 'tanh', got '{activation}'")
        for k, v in (("b", b), ("beta", beta)):
            if v is not None and not v > 0:
                raise RobenchError(f"autozoom {k} must be > 0 or null, got {v}")
        if int(q) < 1 or not lr > 0 or not const > 0 or int(switch_iterations) < 1 or int(levels) < 1 or int(ae_epochs) < 1:
            raise RobenchError("autozoom needs q >= 1, lr > 0, const > 0, switch_iterations >= 1, levels >= 1 and ae_epochs >= 1")
        if ae_images is not None and int(ae_images) < 1:
            raise RobenchError(f"autozoom ae_images must be >= 1 or null (all training images), got {ae_images}")
        self.codec_kind, self.q, self.b, self.beta = codec, int(q), b, beta
        self.lr, self.const, self.switch = float(lr), float(const), int(switch_iterations)
        self.resize, self.levels, self.activation = resize, int(levels), activation
        self.ae_images, self.ae_epochs, self.ae_seed = ae_images, int(ae_epochs), int(ae_seed)
        self.codec: Optional[Codec] = None
        self.stats: Dict = {"codec": codec}

    # ------------------------------------------------------------------ the autoencoder
    def set_codec(self, codec: Codec) -> None:
        """Use this trained :class:`Codec` (programmatic use)."""
        self.codec = codec.eval()

    def prepare(self, context) -> None:
        if self.codec_kind != "ae" or self.codec is not None:
            return
        if context.class_images is None:
            raise RobenchError("autozoom codec=ae trains its autoencoder on training images: run it where the engine "
                               "has a training split (robench attack), or use codec=bilinear")
        n = self.ae_images if self.ae_images is not None else 10 ** 9
        x = context.class_images.sample(n, torch.Generator().manual_seed(self.ae_seed))
        if x.shape[-1] % 2 ** self.levels or x.shape[-2] % 2 ** self.levels:
            raise RobenchError(f"autozoom levels={self.levels}: the image side {tuple(x.shape[-2:])} must be divisible by {2 ** self.levels}")
        codec = train_codec(x, self.levels, self.activation, self.ae_epochs, self.ae_seed)
        with torch.no_grad():
            mse = float(F.mse_loss(codec(x[:1000]), x[:1000]))
        self.set_codec(codec.to(context.device))
        self.stats.update({"ae_images": len(x), "ae_epochs": self.ae_epochs, "ae_train_mse": mse})

    def summary_extra(self):
        return {"autozoom": dict(self.stats)}

    # ------------------------------------------------------------------ the attack
    def _attack(self, oracle: AttackView, generator: torch.Generator, task: ScoreTask) -> None:
        eps, idx, dev, geo, shape = task.eps, task.idx, task.device, task.geometry, task.shape
        if self.codec_kind == "ae":
            if self.codec is None:
                raise RobenchError("autozoom: no autoencoder (the engine trains it in prepare(); or give one with set_codec)")
            dec = self.codec.decoder.to(dev)
            zshape = tuple(self.codec.encoder(torch.zeros(1, *shape, device=dev)).shape[1:])
            with torch.no_grad():
                d0 = dec(torch.zeros(1, *zshape, device=dev))

            def decode(z):
                with torch.no_grad():
                    return upsample(dec(z) - d0, shape[1:])
        else:
            zshape = (shape[0], int(self.resize), int(self.resize))

            def decode(z):
                return upsample(z, shape[1:])
        dz = math.prod(zshape)
        beta = self.beta if self.beta is not None else 1.0 / dz
        b = self.b if self.b is not None else float(self.q)
        q = self.q
        B = len(idx)
        z = torch.zeros(B, dz, device=dev)
        M, V = torch.zeros_like(z), torch.zeros_like(z)
        t = torch.zeros(B, 1, device=dev)
        c = torch.full((B,), self.const, device=dev)
        it = torch.zeros(B, dtype=torch.long, device=dev)

        while True:
            idx, z, M, V, t, c, it = keep_active(oracle, idx, z, M, V, t, c, it)
            if len(idx) == 0:
                return
            B = len(idx)
            u = torch.randn(B, q, dz, generator=generator, device=dev)
            u = u / u.norm(dim=2, keepdim=True).clamp_min(1e-12)
            codes = torch.cat([z[:, None], z[:, None] + beta * u], 1).view(B * (q + 1), *zshape)
            x0r = task.x0[idx].repeat_interleave(q + 1, 0)
            x = geo.clip(x0r, decode(codes), eps, task.box)
            ridx = idx.repeat_interleave(q + 1)
            p = oracle.scores(x, ridx)
            dist2 = (x - x0r).flatten(1).pow(2).sum(1)
            f = (dist2 + c.repeat_interleave(q + 1) * margin_loss(p, *task.classes(ridx), kappa=0.0)).view(B, q + 1)
            f = torch.nan_to_num(f, nan=0.0)
            g = (b * ((f[:, 1:] - f[:, :1]) / beta)[:, :, None] * u).mean(1)           # (B, dz)
            t += 1
            M = 0.9 * M + 0.1 * g
            V = 0.999 * V + 0.001 * g * g
            corr = (1 - 0.999 ** t).sqrt() / (1 - 0.9 ** t)
            z = z - self.lr * corr * M / (V.sqrt() + 1e-8)
            it += 1
            c = torch.where(it % self.switch == 0, c * 10, c)  # no success yet (else the sample left): c x 10
