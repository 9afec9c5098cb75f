"""GenAttack's audio variant [alzantot2019 §3.4, Algorithm 2] [alzantot2018speech]: a genetic search on
the 8 least-significant bits of 16-bit audio samples, score-based (probabilities only)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from robench.attacks.base import AttackView, keep_active
from robench.attacks.score._common import ScoreAttack, ScoreTask
from robench.attacks.score.genattack import genattack_fitness
from robench.errors import RobenchError
from robench.registry import ATTACKS


def signal_box(view) -> Tuple[float, float]:
    """The input domain's box ``(low, high)`` as the oracle view states it (robench/domain.py: audio in
    [-1, 1])."""
    return float(view.low), float(view.high)


def audio_fitness(p: torch.Tensor, y: torch.Tensor, targets, kind: str = "prob") -> torch.Tensor:
    """Fitness to MAXIMISE. ``prob`` (default): the target's softmax probability (the reference code's
    ``score``); untargeted (robench's counterpart; the thesis reports untargeted runs without defining
    their fitness): the probability of every class but the true one, as a masked sum (not ``1 - p_y``,
    which loses the small values to rounding). ``log_odds``: the image attack's fitness
    (:func:`~robench.attacks.score.genattack.genattack_fitness`, [alzantot2019 §2.5]). Unanswered (NaN)
    rows get -inf."""
    if kind == "log_odds":
        return genattack_fitness(p, y, targets)
    if targets is not None:
        f = p.gather(1, targets[:, None]).squeeze(1)
    else:
        f = p.masked_fill(torch.nn.functional.one_hot(y, p.shape[1]).bool(), 0.0).sum(1)
    return torch.nan_to_num(f, nan=float("-inf"))


def split_uniform(u: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One uniform draw in [0, 1) -> (a fair coin ``u < 1/2``, an independent uniform ``2u mod 1``), in
    place on ``u``: the crossover's parent choice and the mutation's draw from one random tensor."""
    coin = u < 0.5
    return coin, u.mul_(2).sub_((~coin).to(u.dtype))


@ATTACKS.register("genattack_audio")
class GenAttackAudio(ScoreAttack):
    """GenAttack for speech ([alzantot2019 §3.4, Algorithm 2]; Alzantot et al. [alzantot2018speech]):
    noise on the 8 least-significant bits of 16-bit samples, found by a genetic algorithm that sees
    only the victim's probabilities. The thesis leaves every hyper-parameter to its reference code
    (nesl/adversarial_audio, ``audio_attack.py``). The defaults below are the low-byte settings of that
    code's early versions (mutation 0.05 / 0.10 and the refinement to ``limit``, which survive only as
    commented-out lines in its later commits): they are what the thesis states ("the 8 least-significant
    bits", limit 4). Its final version (commit 4341ee6) differs: it mutates each 16-bit sample with
    probability 0.0005 by an integer in [-16, 16) at temperature 0.01, and its mutation reads the
    little-endian sample as big-endian, so the change lands on the high byte (up to 4,096 int16 steps), far
    outside any small Linf budget. ``mutation_byte=high`` with the settings of
    ``experiment=genattack_speech_fsdd_reference_final`` is that version, as a robench variant (below);
    REPRODUCTION.md section 7 measures both. The defaults:

    * a member is an integer change of the clip's samples, in steps ``q = (high - low) / 2**sample_bits``
      (one int16 step, 1/32768, on [-1, 1]); only the low byte of each sample changes, the high byte
      never does (the reference code edits the low byte of each little-endian sample and keeps it in
      0..255), so every queried sample stays in its own block of 256 values;
    * initial population (``pop_size`` = 20): each sample's low byte moves by +-1 (equally likely) with
      probability ``init_prob`` = 0.2;
    * fitness: the target's softmax probability (:func:`audio_fitness`), one query per member
      evaluated;
    * elitism (Algorithm 2 as printed has none; the reference code keeps two): the ``elite_size`` = 2
      fittest members survive unchanged; they are not evaluated again
      (their fitness is kept, so a generation costs ``pop_size - elite_size`` = 18 queries per
      sample; the reference code re-scores them, 20 per generation), except after a refinement that
      changed them;
    * selection: each child's two parents are drawn independently from
      ``softmax(fitness / temperature)``, ``temperature`` = 0.03;
    * crossover: uniform, each sample from either parent with probability 1/2 (the coin and the
      mutation's draw below come from one uniform number per sample, :func:`split_uniform`);
    * mutation, per sample: with probability ``mutation_prob`` = 0.05 the low byte moves by an integer
      drawn uniformly from ``[-mutation_range, mutation_range)`` = [-4, 4); otherwise, with
      probability ``step_prob`` = 0.10 (a second, independent draw, as in the reference code: 0.095
      overall), by +-1; the byte is then clipped to 0..255;
    * refinement: every ``refine_every`` = 5 generations (generations 5, 10, ...) every member's low
      byte is clipped back to within ``limit`` = 4 of the original low byte;
    * the run ends at the sample's first success (the oracle judges every evaluated member; the thesis
      checks the fittest) or when its query budget is spent. The thesis allows 500 iterations
      (generations 0-499): ``pop_size + 499 (pop_size - elite_size)`` = 9,002 queries with the defaults.

    ``mutation_byte=high`` (the final reference code's mutation; robench's reading of it): the big mutation
    moves the whole sample by ``256 x`` its integer (the high byte; the reference code's byte-swapped
    addition also carries +-1 into the low byte now and then, which robench does not reproduce), the members
    are no longer held to their block of 256 values (only the budget and the box bound them), ``init_range``
    R draws the initial changes uniformly from [-R, R) steps instead of +-1 (the final code's initial members:
    probability 0.0005, [-16, 16), on the right byte), and ``refine_every: null`` drops the refinement (the
    final code has none). Crossover stays uniform per sample (Algorithm 2's); the final code's crossover
    copies only the low byte from the first parent and the high byte always from the second, a side effect
    of the byte swap that robench does not copy either.

    robench's threat model on top (deliberate deviations, in int16 steps ``E = floor(eps / q)``): every
    member is clipped to ``|s' - s| <= E`` after initialisation and after each mutation, so *every*
    queried row lies in the budget's Linf ball (the reference code lets members drift past ``limit``
    between refinements); with ``eps = limit * q`` (budget ``linf_audio``: 4 / 32768) the refinement
    changes nothing and the budget is the reference code's ``limit``. Every queried row lies in the
    domain's box: a sample keeps its high byte, so its value stays in ``[low, high - q]``.

    Meant for 16-bit audio held as int16 / 32768 (dataset=fsdd, dataset=audio_folder), where a step is
    one int16 step and the low byte is the sample's own; other inputs are moved in steps of
    ``(high - low) / 2**sample_bits`` within blocks of 256 steps (:meth:`bands`). Linf only. Batched:
    each generation evaluates the children of every active sample in one oracle call; samples the
    oracle reports done leave the batch.
    """

    name = "genattack_audio"
    norms = ("linf",)
    layouts = ("NCT",)  # waveforms (robench/domain.py): a sample's low byte is an audio notion

    param_ranges = {"pop_size": ">=2", "elite_size": ">=1", "temperature": ">0", "mutation_prob": "[0,1]",
                    "mutation_range": ">=1", "step_prob": "[0,1]", "init_prob": "[0,1]", "limit": ">=1",
                    "refine_every": ">=1", "sample_bits": ">=8", "init_range": ">=1"}

    def __init__(self, pop_size: int = 20, elite_size: int = 2, temperature: float = 0.03, mutation_prob: float = 0.05,
                 mutation_range: int = 4, step_prob: float = 0.10, init_prob: float = 0.2, limit: int = 4,
                 refine_every: Optional[int] = 5, sample_bits: int = 16, fitness: str = "prob",
                 mutation_byte: str = "low", init_range: Optional[int] = None):
        if fitness not in ("prob", "log_odds"):
            raise RobenchError(f"genattack_audio fitness must be prob (the reference code's) or log_odds (the image "
                               f"attack's), got '{fitness}'")
        self.fitness = str(fitness)
        if not 1 <= int(elite_size) < int(pop_size):
            raise RobenchError(f"genattack_audio needs 1 <= elite_size < pop_size (at least one child), got elite_size="
                               f"{elite_size}, pop_size={pop_size}")
        if not temperature > 0:
            raise RobenchError(f"genattack_audio temperature must be > 0, got {temperature}")
        for k, v in (("mutation_prob", mutation_prob), ("step_prob", step_prob), ("init_prob", init_prob)):
            if not 0.0 <= v <= 1.0:
                raise RobenchError(f"genattack_audio {k} must be in [0, 1], got {v}")
        if mutation_byte not in ("low", "high"):
            raise RobenchError(f"genattack_audio mutation_byte must be low (the thesis's 8 least-significant bits) or "
                               f"high (the final reference code's), got '{mutation_byte}'")
        for k, v in (("mutation_range", mutation_range), ("limit", limit), ("refine_every", refine_every),
                     ("init_range", init_range)):
            if v is None and k in ("refine_every", "init_range"):
                continue
            if int(v) != v or v < 1:
                raise RobenchError(f"genattack_audio {k} must be an integer >= 1, got {v}")
        if int(sample_bits) != sample_bits or not 8 <= sample_bits <= 24:
            raise RobenchError(f"genattack_audio sample_bits must be an integer in 8..24 (16: int16 audio), got {sample_bits}")
        self.pop_size, self.elite = int(pop_size), int(elite_size)
        self.tau, self.p_mut, self.rng, self.p_step = float(temperature), float(mutation_prob), int(mutation_range), float(step_prob)
        self.p_init, self.limit, self.bits = float(init_prob), int(limit), int(sample_bits)
        self.refine_every = None if refine_every is None else int(refine_every)
        self.high = mutation_byte == "high"
        self.init_range = None if init_range is None else int(init_range)
        #: steps of one unit of the big mutation: 1 on the low byte, 256 on the high byte
        self.unit = 256 if self.high else 1
        #: the members' integer type: a low-byte change fits int16, a whole-sample one may not
        self.dtype = torch.int32 if self.high else torch.int16

    def bands(self, view, x0: torch.Tensor, steps: int, limit: int) -> Tuple[torch.Tensor, ...]:
        """Per sample of the clips x0 (n, *shape), the integer changes allowed, as tensors of the members'
        type (``self.dtype``): (lo, hi) for the budget (``|d| <= steps``) and (lo, hi) for the refinement
        (``|d| <= limit``): the low byte of the sample's code ``u = floor((x0 - low) / q)`` stays in 0..255
        (its high byte never changes; with ``mutation_byte=high`` only the box bounds the sample) and
        ``x0 + d q`` stays in the box [low, high]. On 16-bit data (int16 / 32768
        on [-1, 1]) ``u`` is the sample's own unsigned code, whose low byte is that of the int16 value;
        other inputs are moved in the same steps of q."""
        low, high = signal_box(view)
        q = (high - low) / 2 ** self.bits
        x = x0.double()
        u = torch.floor((x - low) / q + 1e-6)
        lowbyte = torch.remainder(u, 256)
        up = torch.floor((high - x) / q + 1e-6).clamp_min(0)  # steps to the top of the box
        if self.high:  # the whole sample moves (the final reference code's mutation): only the box bounds it
            lo_b, hi_b = -u, up
        else:
            lo_b, hi_b = -lowbyte, torch.minimum(255 - lowbyte, up)
        return tuple(t.to(self.dtype) for t in (lo_b.clamp_min(-steps), hi_b.clamp_max(steps),
                                        lo_b.clamp_min(-limit), hi_b.clamp_max(limit)))

    def _mutate(self, child: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, lo: torch.Tensor,
                hi: torch.Tensor) -> torch.Tensor:
        """Mutation of children (b, m, *shape) from uniforms v of their shape: where ``v < p_mut``
        (probability mutation_prob) the low byte moves by ``floor(v / p_mut * 2R) - R``, uniform in
        [-R, R); where ``p_mut <= v < p_mut + (1 - p_mut) p_step`` (probability (1 - mutation_prob)
        step_prob: the reference code's second, independent draw) by -1 or +1 (the lower or upper half
        of that interval); then every sample is clipped to the band [lo, hi] of its clip (``idx``)."""
        p_mut, p_small = self.p_mut, (1.0 - self.p_mut) * self.p_step
        big = torch.floor(v * (2 * self.rng / max(p_mut, 1e-30))) - self.rng
        if self.unit != 1:
            big = big * self.unit
        small = torch.where(v < p_mut + p_small / 2, -1.0, 1.0)
        change = torch.where(v < p_mut, big, torch.where(v < p_mut + p_small, small, 0.0)).to(child.dtype)
        return torch.maximum(torch.minimum(child + change, hi[idx][:, None]), lo[idx][:, None])

    def _attack(self, oracle: AttackView, generator: torch.Generator, task: ScoreTask) -> None:
        idx, dev, P, E = task.idx, task.device, self.pop_size, self.elite
        low, high = signal_box(oracle)
        q = (high - low) / 2 ** self.bits  # one sample step (1/32768 for int16 audio on [-1, 1])
        steps = int(task.eps / q + 1e-6)  # the budget in sample steps
        if steps < 1:
            raise RobenchError(f"genattack_audio changes samples by whole steps of {q:.6g}: budget.eps={task.eps:g} is "
                               f"below one step; use at least {q:.6g} (e.g. budget=linf_audio, 4 steps)")
        lo_all, hi_all, lo_ref, hi_ref = (t.to(dev) for t in self.bands(oracle, task.x0, steps, self.limit))
        x0_all = task.x0.to(dev)
        shape = task.shape

        def clip(d, rows, lo, hi):
            return torch.maximum(torch.minimum(d, hi[rows][:, None]), lo[rows][:, None])

        def evaluate(d: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            """Query members d (b, m, *shape) of samples idx; fitness (b, m)."""
            b, m = d.shape[:2]
            x = x0_all[idx][:, None] + d.to(x0_all.dtype) * q
            rows = idx.repeat_interleave(m)
            p = oracle.scores(x.reshape(b * m, *shape), rows)
            return audio_fitness(p, *task.classes(rows), self.fitness).view(b, m)

        B = len(idx)
        # initial population: +-1 on each sample's low byte with probability init_prob, then the budget
        u = torch.rand((2, B, P, *shape), generator=generator, device=dev)
        if self.init_range is None:  # +-1, equally likely
            first = torch.where(u[1] < 0.5, -1, 1)
        else:  # uniform in [-init_range, init_range) steps (the final reference code's, on the low byte)
            first = torch.floor(u[1] * (2 * self.init_range)) - self.init_range
        pop = torch.where(u[0] < self.p_init, first, 0).to(self.dtype)
        pop = clip(pop, idx, lo_all, hi_all)
        fit = evaluate(pop, idx)
        gen = 0
        while True:
            idx, pop, fit = keep_active(oracle, idx, pop, fit)
            if len(idx) == 0:
                return
            B = len(idx)
            ar = torch.arange(B, device=dev)
            gen += 1
            order = fit.argsort(1, descending=True)
            elite, elite_fit = pop[ar[:, None], order[:, :E]], fit.gather(1, order[:, :E])
            # selection: softmax(fitness / temperature); every member of an active sample was answered
            probs = torch.softmax(fit / self.tau, 1)
            par = torch.multinomial(probs, 2 * (P - E), replacement=True, generator=generator)
            # one uniform draw per child sample serves crossover and mutation: u < 1/2 picks parent 1,
            # and v = 2u mod 1 (uniform, independent of that bit) decides the mutation
            take1, v = split_uniform(torch.rand((B, P - E, *shape), generator=generator, device=dev))
            child = torch.where(take1, pop[ar[:, None], par[:, :P - E]], pop[ar[:, None], par[:, P - E:]])
            child = self._mutate(child, v, idx, lo_all, hi_all)
            if self.refine_every is not None and gen % self.refine_every == 0:  # the reference code's refinement, every member
                child = clip(child, idx, lo_ref, hi_ref)
                refined = clip(elite, idx, lo_ref, hi_ref)
                moved = (refined != elite).flatten(2).any(2)
                if bool(moved.any()):  # an elite the refinement changed is evaluated again
                    r = moved.nonzero()
                    elite = refined
                    f = evaluate(refined[r[:, 0], r[:, 1]][:, None], idx[r[:, 0]]).squeeze(1)
                    elite_fit = elite_fit.index_put((r[:, 0], r[:, 1]), f)
            cfit = evaluate(child, idx)
            pop = torch.cat([elite, child], 1)
            fit = torch.cat([elite_fit, cfit], 1)
