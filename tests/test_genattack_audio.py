"""genattack_audio (robench/attacks/score/genattack_audio.py) on a tiny kws_cnn trained here on synthetic
tones (never FSDD): the low-byte constraint on every queried row, the oracle's counts checked against
the rows the victim really evaluated, and success where random noise of the same size fails."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import TensorDataset

from robench.attacks.score.genattack_audio import GenAttackAudio, audio_fitness, signal_box, split_uniform
from robench.data.base import DatasetSplits
from robench.errors import RobenchError
from robench.referee.oracle import Oracle

T, K, STEP, BOX = 1024, 6, 1.0 / 32768, (-1.0, 1.0)


def tones(n: int, seed: int, amp: float = 0.005):
    """Class k: a tone at 500 k Hz (8 kHz rate) of amplitude ``amp``, random phase, a little noise, on the
    int16 grid. The clips sit around 0.45, inside both [0, 1] and [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    t = torch.arange(T) / 8000
    x = 0.45 + amp * torch.sin(2 * math.pi * (500 * y[:, None] + 500) * t + torch.rand(n, 1, generator=g) * 6.28)
    x = x + torch.randn(n, T, generator=g) * 3 * STEP
    return torch.round(x * 32768)[:, None] / 32768, y


@pytest.fixture(scope="module")
def audio_victim():
    from robench.defenses.natural import Natural
    from robench.models import build_model
    from robench.training.loop import train

    (xtr, ytr), (xte, yte) = tones(240, 0), tones(24, 1)
    splits = DatasetSplits("tones", TensorDataset(xtr, ytr), TensorDataset(xte, yte), K, (1, T), (0.0,), (1.0,))
    torch.manual_seed(0)
    model = build_model("kws_cnn", splits, {"width": 16, "shift_ms": 0.0, "noise_prob": 0.0})
    m = train(model, Natural(), splits, OmegaConf.create({"epochs": 10, "batch_size": 32, "lr": 0.003,
                                                          "schedule": "cosine"}), torch.device("cpu"), 0, progress=False)
    assert m["clean_accuracy"] >= 0.9
    model.eval()
    return model, xte, yte


def offsets(rows: torch.Tensor, x0: torch.Tensor):
    """(int16 codes of rows, codes of the clip each row perturbs: its nearest clip in Linf over the first 128
    samples; the clips differ there by far more than any budget here, and a wrong pick could only fail the
    full-length checks that follow, never pass them)."""
    u, u0 = rows * 32768, x0 * 32768  # float32 holds every int16 code exactly
    near = torch.cat([(c[:, None, :, :128] - u0[None, :, :, :128]).abs().flatten(2).amax(2).argmin(1) for c in u.split(2048)])
    return u, u0[near]


class Recorder(torch.nn.Module):
    """The victim, remembering every row it evaluates while ``on``."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows, self.on = model, [], True

    def forward(self, x):
        if self.on:
            self.rows.append(x.detach().clone())
        return self.model(x)


def run_targeted(attack: GenAttackAudio, model, x, y, steps: int, max_q: int):
    """(every row the victim evaluated, the oracle's result, the targets) of a targeted run within ``steps``."""
    targets = (y + 1 + torch.randint(0, K - 1, (len(y),), generator=torch.Generator().manual_seed(3))) % K
    rec = Recorder(model)
    oracle = Oracle(rec, x, y, access="scores", norm="linf", eps=steps * STEP, max_queries=max_q, targets=targets,
                    num_classes=K, box=BOX)
    attack.run(oracle.view(), torch.Generator().manual_seed(0))
    rec.on = False
    return torch.cat(rec.rows), oracle.finalize(), targets


def test_low_byte_budget_counts_and_success_over_random_noise(audio_victim):
    model, x, y = audio_victim
    steps, max_q = 8, 1500
    rows, res, targets = run_targeted(GenAttackAudio(limit=steps, mutation_range=steps), model, x, y, steps, max_q)

    # the oracle's counts equal the rows the victim evaluated; per sample: 20 + 18 k, capped by the budget
    assert int(res.queries.sum()) == len(rows)
    for q in res.queries.tolist():
        assert q == max_q or (q - 20) % 18 == 0, q
    # every queried row: whole int16 steps, within `steps` of its clip, the high byte of every sample kept
    u, u0 = offsets(rows, x)
    assert torch.equal(u, u.round())
    assert float((u - u0).abs().max()) <= steps
    assert torch.equal(torch.div(u, 256, rounding_mode="floor"), torch.div(u0, 256, rounding_mode="floor"))
    assert float(rows.min()) >= -1 and float(rows.max()) <= 1
    # success where random noise of the same size (dense, uniform in +-steps, as many rows) fails
    n_ga = int(res.success.sum())
    g = torch.Generator().manual_seed(1)
    hit = torch.zeros(len(y), dtype=torch.bool)
    with torch.no_grad():
        for _ in range(max_q // 100):
            noise = torch.randint(-steps, steps + 1, (len(y), 100, 1, T), generator=g).float() * STEP
            pred = model((x[:, None] + noise).reshape(-1, 1, T)).argmax(1).view(len(y), 100)
            hit |= (pred == targets[:, None]).any(1)
    print(f"genattack_audio {n_ga} / {len(y)} targeted successes, random noise {int(hit.sum())}")
    assert n_ga >= 3 and int(hit.sum()) <= n_ga // 3, (n_ga, int(hit.sum()))
    assert float(res.best_x.sub(x).abs().max()) <= steps * STEP + 1e-9
    # the records of an audio run carry SNR and dB_x of each adversarial point; the summary their means
    from robench.evaluation import results as R

    fields = R.attack_fields(res, x)
    ok = res.success.nonzero().flatten().tolist()
    for j in ok:
        delta = (res.best_x[j] - x[j]).double()
        want = 20 * math.log10(float(delta.abs().max())) - 20 * math.log10(float(x[j].abs().max()))
        assert abs(fields[j]["db_x"] - want) < 1e-6
        assert abs(fields[j]["snr_db"] - 10 * math.log10(float(x[j].double().pow(2).sum() / delta.pow(2).sum()))) < 1e-6
    recs = [{**R.new_record(i, int(y[i]), int(targets[i]), int(y[i]), True, 0), **f} for i, f in enumerate(fields)]
    summ = R.summarize(recs, {"max_queries": max_q})
    assert abs(summ["mean_db_x"] - sum(fields[j]["db_x"] for j in ok) / len(ok)) < 1e-9
    assert "mean dB_x (successes)" in dict(R.summary_rows(summ))


def test_refinement_and_budget_clip_when_limit_is_smaller(audio_victim):
    """eps 16 steps, limit 2: after every 5th generation the members are back within 2 steps; no row
    ever leaves the 16-step ball."""
    model, x, y = audio_victim
    rec = Recorder(model)
    oracle = Oracle(rec, x[:4], y[:4], access="scores", norm="linf", eps=16 * STEP, max_queries=20 + 18 * 12,
                    num_classes=K, box=BOX)
    GenAttackAudio(limit=2, mutation_range=8, mutation_prob=0.5).run(oracle.view(), torch.Generator().manual_seed(0))
    u, u0 = offsets(torch.cat(rec.rows), x[:4])
    d = u - u0
    assert float(d.abs().max()) <= 16
    assert float(d.abs().max()) > 2  # the mutations do go past the limit between refinements


class Box:
    """What bands() reads of a view: the audio box."""

    low, high = BOX


def test_fitness_box_and_errors(audio_victim):
    p = torch.tensor([[0.7, 0.2, 0.1], [float("nan")] * 3])
    y, t = torch.tensor([0, 0]), torch.tensor([2, 1])
    f = audio_fitness(p, y, t)
    assert abs(float(f[0]) - 0.1) < 1e-7 and float(f[1]) == float("-inf")
    assert abs(float(audio_fitness(p, y, None)[0]) - 0.3) < 1e-7
    assert signal_box(Box()) == (-1.0, 1.0)
    model, x, y = audio_victim
    with pytest.raises(RobenchError, match="below one step"):
        o = Oracle(model, x[:2], y[:2], access="scores", norm="linf", eps=0.5 * STEP, max_queries=100, num_classes=K, box=BOX)
        GenAttackAudio().run(o.view(), torch.Generator().manual_seed(0))
    # the bands: low byte kept in 0..255, the budget, the box's top; off-grid inputs move in whole steps
    a = GenAttackAudio()
    x0 = torch.tensor([[[-1.0, 0.0, 255 / 32768, 256 / 32768, 1 - 2 * STEP, 0.3 + STEP / 3]]])
    lo, hi, lo_r, hi_r = a.bands(Box(), x0, steps=300, limit=4)
    assert lo.tolist()[0][0][:5] == [0, 0, -255, 0, -254] and lo_r.tolist()[0][0][:5] == [0, 0, -4, 0, -4]
    assert hi.tolist()[0][0][:5] == [255, 255, 0, 255, 1]
    assert hi_r.tolist()[0][0][:5] == [4, 4, 0, 4, 1]
    u = math.floor((float(x0[0, 0, 5]) + 1) * 32768)  # the off-grid sample: its block of 256 steps
    assert int(lo[0, 0, 5]) == -(u % 256) and int(hi[0, 0, 5]) == 255 - u % 256
    with pytest.raises(RobenchError, match="elite_size"):
        GenAttackAudio(pop_size=2, elite_size=2)


@pytest.mark.parametrize("preset, targeted, attack", [("genattack_speech_fsdd", True, "genattack_audio"),
                                                      ("genattack_speech_fsdd_untargeted", False, "genattack_audio"),
                                                      ("genattack_speech_fsdd_ceiling", True, "pgd"),
                                                      ("genattack_speech_fsdd_reference_final", True, "genattack_audio")])
def test_speech_presets_compose(preset, targeted, attack):
    from hydra import compose, initialize_config_dir

    from robench.config import configs_dir, validate_attack_config

    with initialize_config_dir(version_base="1.3", config_dir=str(configs_dir())):
        cfg = compose("run_attack", overrides=[f"experiment={preset}"])
    assert cfg.dataset.name == "fsdd" and cfg.model.name == "kws_cnn" and cfg.attack.name == attack
    final = preset.endswith("reference_final")
    assert cfg.budget.eps * 32768 == (4096 if final else 4) and cfg.budget.targeted is targeted
    assert cfg.budget.target == ("all" if targeted else "random")
    validate_attack_config(cfg)
    if attack == "genattack_audio":  # the reference code's settings (early or final), 500 generations
        p = cfg.attack.params
        if final:
            assert (p.pop_size, p.elite_size, p.temperature, p.mutation_prob, p.mutation_range, p.mutation_byte,
                    p.step_prob, p.init_prob, p.init_range, p.refine_every) == (20, 2, 0.01, 0.0005, 16, "high", 0.0,
                                                                                 0.0005, 16, None)
        else:
            assert (p.pop_size, p.elite_size, p.temperature, p.limit, p.refine_every) == (20, 2, 0.03, 4, 5)
        assert cfg.budget.max_queries == p.pop_size + 499 * (p.pop_size - p.elite_size)


def test_crossover_and_mutation_draws():
    """The crossover's coin and the mutation's uniform come from one draw: independent, each with the
    right law; the mutation moves a low byte by U[-R, R) with probability 0.05, else by +-1 with 0.095."""
    u = torch.rand(400_000, generator=torch.Generator().manual_seed(0))
    coin, v = split_uniform(u.clone())
    assert 0.49 < float(coin.float().mean()) < 0.51 and float(v.min()) >= 0 and float(v.max()) < 1
    for half in (v[coin], v[~coin]):  # v is uniform whichever parent the coin picked
        assert abs(float(half.mean()) - 0.5) < 0.01 and abs(float((half < 0.05).float().mean()) - 0.05) < 0.003
    a = GenAttackAudio(mutation_range=4)
    n = 200_000
    lo, hi = torch.full((1, 1, n), -100, dtype=torch.int16), torch.full((1, 1, n), 100, dtype=torch.int16)
    c = a._mutate(torch.zeros(1, 1, 1, n, dtype=torch.int16), v[:n].view(1, 1, 1, n), torch.tensor([0]), lo, hi)
    freq = {k: float((c == k).float().mean()) for k in range(-5, 5)}
    assert freq[-5] == 0 and freq[4] == 0  # [-4, 4)
    assert abs(freq[-4] - 0.05 / 8) < 0.002 and abs(freq[1] - (0.05 / 8 + 0.95 * 0.10 / 2)) < 0.003
    assert abs(freq[0] - (1 - 0.05 - 0.095 + 0.05 / 8)) < 0.004


def test_saved_clips_are_wav_files_of_the_adversarial_points(audio_victim, tmp_path):
    """save_adversarial=[npz, wav] on an audio run (robench.evaluate, as the speech presets ask the CLI): one WAV
    per row in adversarial/wav/<index>_<label>_<target>.wav holding exactly the stored point, and the
    successes read back from their files still fool the victim."""
    import robench
    from robench.audio import read_wav
    from robench.domain import Domain
    from robench.evaluation.adversarial import load_adversarial

    model, x, y = audio_victim
    x, y = x[:8], y[:8]
    dom = Domain(-1.0, 1.0, "NCT", sample_rate=8000, quantum=STEP)
    run = tmp_path / "run"
    r = robench.evaluate(model, x, y, attack="genattack_audio", budget=robench.Budget(norm="linf", eps=16 * STEP,
                         max_queries=600), domain=dom, run_dir=run, save_adversarial=["npz", "wav"], limit=16,
                         mutation_range=16, batch_size=8)
    a = load_adversarial(run)
    files = sorted((run / "adversarial" / "wav").glob("*.wav"))
    assert len(files) == len(a) == 8
    assert int(a.success.sum()) >= 3, r.summary  # a few clips to listen to
    for k in range(len(a)):
        back, rate = read_wav(run / "adversarial" / "wav" / f"{int(a.index[k])}_{int(a.label[k])}_-1.wav")
        clip = torch.from_numpy(back.astype("float32") / 32768)
        assert rate == 8000 and torch.equal(clip, a.x[k])
        if bool(a.success[k]):
            with torch.no_grad():
                assert int(model(clip[None]).argmax(1)) != int(a.label[k])


def test_high_byte_variant_of_the_final_reference_code(audio_victim):
    """mutation_byte=high (experiment=genattack_speech_fsdd_reference_final): sparse mutations by multiples of
    256 steps on top of initial changes in [-16, 16) steps, every row within the budget, counts exact, and it
    finds targeted points where dense or sparse random noise of the same size does not."""
    model, x, y = audio_victim
    E, max_q = 512, 1500
    attack = GenAttackAudio(temperature=0.01, mutation_prob=0.0005, mutation_range=16, mutation_byte="high",
                            step_prob=0.0, init_prob=0.0005, init_range=16, refine_every=None)
    rows, res, targets = run_targeted(attack, model, x, y, E, max_q)
    assert int(res.queries.sum()) == len(rows)
    # each row's clip: the one it equals on most of its first 64 samples (the changes are sparse; offsets()' nearest-in-Linf
    # pick assumes changes smaller than the clips' differences, which 512 steps are not)
    u, c0 = rows * 32768, x * 32768
    near = torch.cat([(r[:, None, :, :64] == c0[None, :, :, :64]).flatten(2).sum(2).argmax(1) for r in u.split(1024)])
    d = u - c0[near]
    assert torch.equal(d, d.round()) and float(d.abs().max()) <= E
    # every change is an initial one in [-16, 16) plus whole high-byte units (or clipped to the budget's edge)
    assert bool((torch.remainder(d + 16, 256) < 32).all())
    assert float(d.abs().max()) >= 256  # the high byte did move
    changed = (d != 0).flatten(1).float().mean(1)
    assert float(changed.max()) < 0.1  # sparse: 0.0005 per sample and generation, at most 83 generations here
    n_ga = int(res.success.sum())
    g = torch.Generator().manual_seed(1)
    dense, sparse = torch.zeros(len(y), dtype=torch.bool), torch.zeros(len(y), dtype=torch.bool)
    with torch.no_grad():
        for _ in range(max_q // 100):
            noise = torch.randint(-E, E + 1, (len(y), 100, 1, T), generator=g).float() * STEP
            dense |= (model((x[:, None] + noise).reshape(-1, 1, T)).argmax(1).view(len(y), 100) == targets[:, None]).any(1)
            m = torch.rand((len(y), 100, 1, T), generator=g) < 0.02
            noise = torch.where(m, (torch.randint(0, 2, m.shape, generator=g) * 2 - 1).float() * E * STEP, 0.0)
            sparse |= (model((x[:, None] + noise).reshape(-1, 1, T)).argmax(1).view(len(y), 100) == targets[:, None]).any(1)
    print(f"high-byte genattack_audio {n_ga} / {len(y)}, dense noise {int(dense.sum())}, sparse noise {int(sparse.sum())}")
    assert n_ga >= max(int(dense.sum()), int(sparse.sum())) + 4, (n_ga, int(dense.sum()), int(sparse.sum()))
    with pytest.raises(RobenchError, match="mutation_byte"):
        GenAttackAudio(mutation_byte="middle")
