"""Our flow-matching sigmas (trainer/flow_objective.py: draw_sigmas, flux_shift_mu, shifted_sigmas) against kohya
sd-scripts' Flux.1 / SD3 samplers.

Two groups of tests:

- Closed form (always run; CI has no sd-scripts): the formulas of ../shared/docs/kohya-flow-models.md sections 2.2
  and 3.2, written here: mu = m N + b, the shift S p / (1 + (S - 1) p), flux_shift at 1024x1024 = shift with
  S = e^1.15 ~ 3.1582, kohya's sigma table, its int truncation, and each mode's distribution, whose quantile
  function is closed form (every mode is a monotone map of a uniform, normal or logit-normal draw).
- kohya's own code (tests/oracles/kohya_flow.py: get_noisy_model_input_and_timesteps of flux_train_utils and
  sd3_train_utils, its scheduler table, get_lin_function, time_shift), skipped with the oracle's reason where
  there is no checkout. The deterministic parts are compared to within float32 rounding. kohya draws from
  torch's global generator and ours from a torch.Generator, so the draws are compared as distributions; the
  closed-form quantiles the CI tests use are checked against kohya's draws too.

Modes, as FlowSettings.timestep_sampling (u ~ N(0, 1) for the sigmoid family, k = sigmoid_scale, S =
discrete_flow_shift):

    uniform       s = U(0, 1)                                  kohya Flux --timestep_sampling uniform
    sigmoid       s = sigmoid(k u)                             ... sigmoid
    shift         s = S p / (1 + (S - 1) p), p = sigmoid(k u)  ... shift --discrete_flow_shift S
    flux_shift    that with S = e^mu, mu = m N + b, N = (H // 2) (W // 2) for the latent's H, W
    sigma         v from the weighting scheme's density, i = int(1000 v), s = table[i] with table[i] =
                  shift of p = (1000 - i) / 1000 (kohya Flux's default: its scheduler's sigmas, t = 1000 ... 1)
    logit_normal  v from the weighting scheme's density, v' = S v / (1 + (S - 1) v), t = int(1000 v'),
                  s = t / 1000 (kohya SD3's only path; S is its --training_shift)

The density (weighting_scheme): logit_normal: sigmoid(N(logit_mean, logit_std)); mode: 1 - w - mode_scale
(cos^2(pi w / 2) - 1 + w) with w ~ U(0, 1); none (and sigma_sqrt, cosmap): U(0, 1).

Tolerances, with n = 20000 draws a sample (every check at about 6 standard errors, a two-sided chance of about
2e-9 each that a correct sampler fails it for some seed; the seeds are fixed, so runs repeat exactly):

- mean: |difference| <= 6 sqrt(var_a / n + var_b / n); variance: 6 sqrt(sum of (mu4 - var^2) / n), the
  variance of a sample variance; for the closed form, var and mu4 come from the quantile function (numerically
  integrated, 2e5 points).
- quantiles against the closed form: at q = 0.001 ... 0.999 the share of draws below the closed-form quantile
  is within 6 sqrt(q (1 - q) / n) + 0.002 of q (the 0.002 is two cells of the 1/1000 grids, where float32 and
  float64 can round a value to the neighbouring cell; the share at or below must reach q - tolerance, the share
  strictly below must not pass q + tolerance, which holds for the discrete modes as well).
- two samples (ours, kohya's): the Kolmogorov-Smirnov distance is at most c sqrt(2 / n), c = sqrt(-ln(alpha/2)/2)
  for alpha = 1e-6 (c = 2.69, D <= 0.027); conservative for the discrete modes.
- deterministic values: 1e-6 absolute for float32 sigmas (8 float32 steps at 1.0; kohya's sigma-table entries
  are at least 3e-4 apart for S = 3 and the SD3 grid 1e-3 apart, so a neighbouring entry or a rounded instead of
  truncated index is far outside it), 1e-12 for mu (python floats).
- draws that cannot differ: sigmoid_scale = 1e-30 makes p = sigmoid(~0) = 1/2 exactly, and logit_std = 1e-30
  makes v = sigmoid(logit_mean) exactly, so those draws are deterministic and compared to within 1e-6 (also with
  kohya), which pins the shift functions, the token count, the table direction and the truncation.

A distribution test cannot tell S = 3.0 from 3.1582 (their means differ by about 6 standard errors at this n);
the deterministic draws do.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import pytest
import torch

from tests.oracles import kohya_flow
from trainer.flow_objective import FlowSettings, draw_sigmas, flux_shift_mu, shifted_sigmas

N = 20000
SEED = 1234
KOHYA_SEED = 4321
GRID = 200_000                      # quantile-function points for the closed-form moments
Q_LEVELS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
SIGMAS = 6.0                        # standard errors allowed
CELL_SLACK = 0.002
KS_LIMIT = math.sqrt(-math.log(1e-6 / 2) / 2) * math.sqrt(2 / N)
ATOL = 1e-6
FLUX_1024 = math.exp(1.15)          # kohya's docs: --timestep_sampling shift --discrete_flow_shift 3.1582
LATENT_1024, LATENT_512 = (128, 128), (64, 64)


def settings(sampling: str, **changes) -> FlowSettings:
    """FlowSettings with every field given (kohya's defaults, raw prediction) and `changes`."""
    values = dict(timestep_sampling=sampling, sigmoid_scale=1.0, discrete_flow_shift=3.0, weighting_scheme="none",
                  logit_mean=0.0, logit_std=1.0, mode_scale=1.29, guidance_scale=1.0)
    values.update(changes)
    return FlowSettings(**values)


# (id, settings, latent height and width)
CASES = [
    ("uniform", settings("uniform"), LATENT_512),
    ("sigmoid", settings("sigmoid"), LATENT_512),
    ("sigmoid-k2", settings("sigmoid", sigmoid_scale=2.0), LATENT_512),
    ("shift-S3", settings("shift"), LATENT_512),
    ("shift-S3.1582-k1.5", settings("shift", discrete_flow_shift=3.1582, sigmoid_scale=1.5), LATENT_512),
    ("flux_shift-1024", settings("flux_shift"), LATENT_1024),
    ("flux_shift-512", settings("flux_shift"), LATENT_512),
    ("flux_shift-832x1216", settings("flux_shift"), (104, 152)),
    ("sigma-S3-u_none", settings("sigma"), LATENT_512),
    ("sigma-S3-u_logit_normal", settings("sigma", weighting_scheme="logit_normal"), LATENT_512),
    ("sigma-S3-u_logit_normal-mean0.5", settings("sigma", weighting_scheme="logit_normal", logit_mean=0.5,
                                                  logit_std=0.8), LATENT_512),
    ("sigma-S1-u_mode", settings("sigma", weighting_scheme="mode", discrete_flow_shift=1.0), LATENT_512),
    ("sigma-S3-u_cosmap", settings("sigma", weighting_scheme="cosmap"), LATENT_512),
    ("logit_normal-S1-u_logit_normal", settings("logit_normal", weighting_scheme="logit_normal",
                                                discrete_flow_shift=1.0), LATENT_512),
    ("logit_normal-S3-u_logit_normal", settings("logit_normal", weighting_scheme="logit_normal"), LATENT_512),
    ("logit_normal-S1-u_logit_normal-mean0.5", settings("logit_normal", weighting_scheme="logit_normal",
                                                        logit_mean=0.5, logit_std=0.8, discrete_flow_shift=1.0),
     LATENT_512),
    ("logit_normal-S1-u_none", settings("logit_normal", discrete_flow_shift=1.0), LATENT_512),  # kohya SD3 default
    ("logit_normal-S3-u_mode", settings("logit_normal", weighting_scheme="mode"), LATENT_512),
]
CASE_IDS = [case[0] for case in CASES]
MODES = ("uniform", "sigmoid", "shift", "flux_shift", "sigma", "logit_normal")


@pytest.fixture
def oracle():
    reason = kohya_flow.missing_reason()
    if reason:
        pytest.skip(reason)
    return kohya_flow


# --- the closed forms (from the doc, not from kohya's code) ------------------------------------------------

def doc_mu(tokens: float) -> float:
    m = (1.15 - 0.5) / (4096 - 256)
    return m * tokens + (0.5 - 256 * m)


def doc_shift(p: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * p / (1 + (shift - 1) * p)


def doc_tokens(latent_hw: tuple[int, int]) -> int:
    height, width = latent_hw
    return (height // 2) * (width // 2)


def doc_table(shift: float) -> torch.Tensor:
    """kohya's sigma-mode table, index i = 0 ... 999 for t = 1000 ... 1."""
    return doc_shift(torch.arange(1000, 0, -1, dtype=torch.float64) / 1000, shift)


def density_quantile(q: torch.Tensor, flow) -> torch.Tensor:
    """The quantile function of the weighting scheme's u (mode's map is decreasing in its uniform)."""
    if flow.weighting_scheme == "logit_normal":
        return torch.sigmoid(flow.logit_mean + flow.logit_std * torch.special.ndtri(q))
    if flow.weighting_scheme == "mode":
        w = 1 - q
        return 1 - w - flow.mode_scale * (torch.cos(math.pi * w / 2) ** 2 - 1 + w)
    return q


def sigma_quantile(q: torch.Tensor, flow: FlowSettings, latent_hw: tuple[int, int]) -> torch.Tensor:
    """The quantile function of s for this mode (float64)."""
    q = q.double()
    mode, shift = flow.timestep_sampling, flow.discrete_flow_shift
    if mode == "uniform":
        return q
    p = torch.sigmoid(flow.sigmoid_scale * torch.special.ndtri(q))
    if mode == "sigmoid":
        return p
    if mode == "shift":
        return doc_shift(p, shift)
    if mode == "flux_shift":
        e_mu = math.exp(doc_mu(doc_tokens(latent_hw)))
        return e_mu / (e_mu + (1 / p - 1))
    if mode == "sigma":         # s decreases with u: the q-quantile of s is the table at u's (1 - q)-quantile
        index = torch.floor(1000 * density_quantile(1 - q, flow)).clamp(0, 999)
        return doc_shift(1 - index / 1000, shift)
    if mode == "logit_normal":
        return torch.floor(1000 * doc_shift(density_quantile(q, flow), shift)) / 1000
    raise ValueError(mode)


@functools.lru_cache(maxsize=None)
def closed_form_moments(case_id: str) -> tuple[float, float, float]:
    """(mean, variance, fourth central moment) of s from its quantile function."""
    _, flow, latent_hw = CASES[CASE_IDS.index(case_id)]
    values = sigma_quantile((torch.arange(GRID, dtype=torch.float64) + 0.5) / GRID, flow, latent_hw)
    mean = values.mean()
    centred = values - mean
    return float(mean), float((centred ** 2).mean()), float((centred ** 4).mean())


# --- the comparisons ---------------------------------------------------------------------------------------

def sample_moments(draws: torch.Tensor) -> tuple[float, float, float]:
    x = draws.double()
    centred = x - x.mean()
    return float(x.mean()), float(x.var()), float((centred ** 4).mean())


def assert_close_moments(draws: torch.Tensor, expected: tuple[float, float, float], label: str) -> None:
    """A sample's mean and variance against known moments (a closed form)."""
    mean, variance, _ = sample_moments(draws)
    n = draws.numel()
    mean_tolerance = SIGMAS * math.sqrt(expected[1] / n)
    variance_tolerance = SIGMAS * math.sqrt(max(expected[2] - expected[1] ** 2, 0.0) / n)
    assert abs(mean - expected[0]) <= mean_tolerance + 1e-5, (label, "mean", mean, expected[0], mean_tolerance)
    assert abs(variance - expected[1]) <= variance_tolerance + 1e-5, (
        label, "variance", variance, expected[1], variance_tolerance)


def assert_quantiles(draws: torch.Tensor, quantile, label: str) -> None:
    """The share of draws below each closed-form quantile is q (see the module docstring)."""
    x = draws.double()
    for q in Q_LEVELS:
        at = float(quantile(torch.tensor([q], dtype=torch.float64)))
        tolerance = SIGMAS * math.sqrt(q * (1 - q) / x.numel()) + CELL_SLACK
        at_or_below = float((x <= at + ATOL).double().mean())
        below = float((x < at - ATOL).double().mean())
        assert at_or_below >= q - tolerance and below <= q + tolerance, (
            label, f"q={q}", f"closed-form quantile {at:.6f}", f"share <= {at_or_below:.4f}, < {below:.4f}",
            f"tolerance {tolerance:.4f}")


def distance_to_table(values: torch.Tensor, table: torch.Tensor) -> float:
    """The largest distance from a value to its nearest table entry."""
    table = torch.sort(table.double()).values
    values = values.double()
    right = torch.searchsorted(table, values).clamp(max=table.numel() - 1)
    left = (right - 1).clamp(min=0)
    return float(torch.minimum((values - table[left]).abs(), (values - table[right]).abs()).max())


def ks_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.sort(a.double()).values, torch.sort(b.double()).values
    points = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, points, right=True).double() / a.numel()
    cdf_b = torch.searchsorted(b, points, right=True).double() / b.numel()
    return float((cdf_a - cdf_b).abs().max())


def assert_same_distribution(mine: torch.Tensor, theirs: torch.Tensor, label: str) -> None:
    """Two samples of one distribution: means, variances (6 standard errors) and the KS distance."""
    mean_a, var_a, fourth_a = sample_moments(mine)
    mean_b, var_b, fourth_b = sample_moments(theirs)
    n_a, n_b = mine.numel(), theirs.numel()
    mean_tolerance = SIGMAS * math.sqrt(var_a / n_a + var_b / n_b)
    variance_tolerance = SIGMAS * math.sqrt(max(fourth_a - var_a ** 2, 0.0) / n_a
                                            + max(fourth_b - var_b ** 2, 0.0) / n_b)
    assert abs(mean_a - mean_b) <= mean_tolerance + 1e-6, (label, "mean", mean_a, mean_b, mean_tolerance)
    assert abs(var_a - var_b) <= variance_tolerance + 1e-6, (label, "variance", var_a, var_b, variance_tolerance)
    distance = ks_distance(mine, theirs)
    assert distance <= KS_LIMIT, (label, "Kolmogorov-Smirnov distance", distance, KS_LIMIT)


def ours(flow: FlowSettings, latent_hw: tuple[int, int], batch: int = N, seed: int = SEED) -> torch.Tensor:
    return draw_sigmas(batch, latent_hw, torch.Generator().manual_seed(seed), flow)


def kohya_options(flow: FlowSettings) -> dict:
    return dict(weighting_scheme=flow.weighting_scheme, logit_mean=flow.logit_mean, logit_std=flow.logit_std,
                mode_scale=flow.mode_scale)


def kohya_draws(flow: FlowSettings, latent_hw: tuple[int, int], batch: int = N, seed: int = KOHYA_SEED):
    """kohya's sigmas for these settings: SD3's path for logit_normal (its --training_shift is S), else Flux's."""
    if flow.timestep_sampling == "logit_normal":
        return kohya_flow.sd3_sigmas(batch, seed, training_shift=flow.discrete_flow_shift, **kohya_options(flow))
    return kohya_flow.flux_sigmas(batch, latent_hw, seed, timestep_sampling=flow.timestep_sampling,
                                  sigmoid_scale=flow.sigmoid_scale, discrete_flow_shift=flow.discrete_flow_shift,
                                  **kohya_options(flow))


@functools.lru_cache(maxsize=None)
def kohya_case_draws(case_id: str) -> torch.Tensor:
    _, flow, latent_hw = CASES[CASE_IDS.index(case_id)]
    return kohya_draws(flow, latent_hw)


# --- closed form: the deterministic functions --------------------------------------------------------------

MU_CASES = [(256, 0.5), (1024, 0.63), (2304, 0.5 + 2048 * 0.65 / 3840), (4096, 1.15),
            (52 * 76, 0.5 + (52 * 76 - 256) * 0.65 / 3840), (9216, 0.5 + 8960 * 0.65 / 3840)]


@pytest.mark.parametrize("tokens, mu", MU_CASES)
def test_flux_shift_mu_is_the_line_through_256_and_4096_tokens(tokens, mu):
    # 256^2, 512^2, 768^2, 1024^2, 832x1216 and 1536^2 images: N = (H/16)(W/16); past 4096 tokens the line goes on
    assert flux_shift_mu(tokens) == pytest.approx(doc_mu(tokens), abs=1e-12)
    assert flux_shift_mu(tokens) == pytest.approx(mu, abs=1e-12)


def test_flux_shift_at_1024_and_512_is_the_docs_shift():
    assert math.exp(flux_shift_mu(4096)) == pytest.approx(3.1582, abs=5e-5)     # kohya's docs' equivalent shift
    assert flux_shift_mu(1024) == pytest.approx(0.63, abs=1e-12)
    assert math.exp(flux_shift_mu(1024)) == pytest.approx(1.88, abs=5e-3)


@pytest.mark.parametrize("shift", [1.0, 3.0, FLUX_1024, 0.5])
def test_shifted_sigmas_is_s_p_over_1_plus_s_minus_1_p(shift):
    p = torch.tensor([0.0, 0.001, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999, 1.0], dtype=torch.float64)
    got = shifted_sigmas(p, shift)
    assert tuple(got.shape) == tuple(p.shape)
    torch.testing.assert_close(got.double(), shift * p / (1 + (shift - 1) * p), rtol=0, atol=ATOL)
    torch.testing.assert_close(got.double()[[0, 4, -1]], torch.tensor([0.0, shift / (1 + shift), 1.0],
                                                                      dtype=torch.float64), rtol=0, atol=ATOL)


# --- closed form: what draw_sigmas returns -----------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_draw_sigmas_gives_float32_cpu_sigmas_in_0_1_repeatably(mode):
    flow = settings(mode, weighting_scheme="logit_normal" if mode == "logit_normal" else "none")
    first = ours(flow, LATENT_512, batch=257)
    assert first.dtype == torch.float32 and first.device.type == "cpu" and tuple(first.shape) == (257,)
    assert bool(((first >= 0) & (first <= 1)).all())
    torch.testing.assert_close(ours(flow, LATENT_512, batch=257), first, rtol=0, atol=0)
    assert not torch.equal(ours(flow, LATENT_512, batch=257, seed=SEED + 1), first)


@pytest.mark.parametrize("shift", [1.0, 3.0, FLUX_1024])
def test_shift_of_a_sigmoid_at_one_half_is_s_over_1_plus_s(shift):
    # sigmoid_scale 1e-30: p = sigmoid(1e-30 u) = 1/2 for every draw
    got = ours(settings("shift", sigmoid_scale=1e-30, discrete_flow_shift=shift), LATENT_512, batch=64)
    torch.testing.assert_close(got.double(), torch.full((64,), shift / (1 + shift), dtype=torch.float64),
                               rtol=0, atol=ATOL)
    got = ours(settings("sigmoid", sigmoid_scale=1e-30, discrete_flow_shift=shift), LATENT_512, batch=64)
    torch.testing.assert_close(got.double(), torch.full((64,), 0.5, dtype=torch.float64), rtol=0, atol=ATOL)


@pytest.mark.parametrize("latent_hw", [LATENT_1024, LATENT_512, (104, 152), (129, 127), (33, 2)])
def test_flux_shift_at_one_half_is_e_mu_over_1_plus_e_mu_with_the_floored_token_count(latent_hw):
    # (129, 127): N = 64 * 63 (kohya's h // 2 * w // 2), not 64.5 * 63.5 (the 0.002 between them is far above ATOL)
    e_mu = math.exp(doc_mu(doc_tokens(latent_hw)))
    got = ours(settings("flux_shift", sigmoid_scale=1e-30), latent_hw, batch=64)
    torch.testing.assert_close(got.double(), torch.full((64,), e_mu / (1 + e_mu), dtype=torch.float64),
                               rtol=0, atol=ATOL)


def test_flux_shift_at_1024_squared_is_shift_with_e_to_the_1_15():
    # the same generator state gives the same normal draws in both modes
    flux = ours(settings("flux_shift"), LATENT_1024, batch=4096)
    shift = ours(settings("shift", discrete_flow_shift=FLUX_1024), LATENT_1024, batch=4096)
    torch.testing.assert_close(flux, shift, rtol=0, atol=ATOL)
    plain = ours(settings("sigmoid"), LATENT_1024, batch=4096)
    torch.testing.assert_close(ours(settings("shift", discrete_flow_shift=1.0), LATENT_1024, batch=4096), plain,
                               rtol=0, atol=ATOL)
    torch.testing.assert_close(shift.double(), doc_shift(plain.double(), FLUX_1024), rtol=0, atol=ATOL)


# logit_std 1e-30: u = sigmoid(logit_mean) for every draw; (u, the sigma-mode index int(1000 u), S). Each
# 1000 u is at least 0.3 from an integer, so float32 rounding cannot move the index
DEGENERATE_SIGMA = [(0.3337, 333, 3.0), (0.8804, 880, 3.0), (0.0004, 0, 3.0), (0.9996, 999, 3.0), (0.5005, 500, 1.0)]


def degenerate(sampling: str, u: float, shift: float) -> FlowSettings:
    return settings(sampling, weighting_scheme="logit_normal", logit_mean=math.log(u / (1 - u)), logit_std=1e-30,
                    discrete_flow_shift=shift)


@pytest.mark.parametrize("u, index, shift", DEGENERATE_SIGMA)
def test_sigma_mode_indexes_the_descending_table_with_the_truncated_u(u, index, shift):
    # index int(1000 u) (0.3337 -> 333, not 334) into t = 1000 ... 1: s = shift of (1000 - index) / 1000, so a
    # large u gives a SMALL sigma (the table is descending), unlike the logit_normal mode
    expected = float(doc_shift(torch.tensor(1 - index / 1000, dtype=torch.float64), shift))
    got = ours(degenerate("sigma", u, shift), LATENT_512, batch=64)
    torch.testing.assert_close(got.double(), torch.full((64,), expected, dtype=torch.float64), rtol=0, atol=ATOL)


# (u, S, kohya SD3's t = int(1000 S u / (1 + (S - 1) u)))
DEGENERATE_SD3 = [(0.3337, 1.0, 333), (0.2, 3.0, 428), (0.8804, 1.0, 880), (0.0004, 1.0, 0), (0.9996, 3.0, 999)]


@pytest.mark.parametrize("u, shift, t", DEGENERATE_SD3)
def test_logit_normal_mode_is_the_truncated_shifted_u_over_1000(u, shift, t):
    # 0.2 at S = 3: 1000 * 0.6 / 1.4 = 428.57 -> 428; 0.0004 -> 0 (kohya SD3 can draw s = 0)
    assert math.floor(1000 * shift * u / (1 + (shift - 1) * u)) == t
    got = ours(degenerate("logit_normal", u, shift), LATENT_512, batch=64)
    torch.testing.assert_close(got.double(), torch.full((64,), t / 1000, dtype=torch.float64), rtol=0, atol=ATOL)


@pytest.mark.parametrize("shift", [3.0, 1.5])
def test_sigma_mode_draws_are_entries_of_the_table(shift):
    got = ours(settings("sigma", discrete_flow_shift=shift), LATENT_512)
    assert distance_to_table(got, doc_table(shift)) <= ATOL
    assert float(got.max()) <= 1.0 and float(got.min()) >= float(doc_table(shift)[-1]) - ATOL


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_logit_normal_mode_draws_are_thousandths_below_1(shift):
    got = ours(settings("logit_normal", weighting_scheme="logit_normal", discrete_flow_shift=shift), LATENT_512)
    thousandths = got.double() * 1000
    assert float((thousandths - thousandths.round()).abs().max()) <= 1e-3
    assert float(got.max()) <= 0.999 + ATOL


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_draws_follow_the_closed_form_distribution(case_id):
    _, flow, latent_hw = CASES[CASE_IDS.index(case_id)]
    draws = ours(flow, latent_hw)
    assert_quantiles(draws, lambda q: sigma_quantile(q, flow, latent_hw), case_id)
    assert_close_moments(draws, closed_form_moments(case_id), case_id)


def test_the_distribution_checks_tell_nearby_modes_apart():
    # what the checks above would catch: the shift left out, S = 2 for 3, the sigma table read ascending
    # (large u -> large sigma), and mode's u for the logit-normal one
    generator = torch.Generator().manual_seed(7)
    p = torch.sigmoid(torch.randn(N, generator=generator, dtype=torch.float64))
    shifted = settings("shift")
    with pytest.raises(AssertionError):
        assert_quantiles(p.float(), lambda q: sigma_quantile(q, shifted, LATENT_512), "no shift")
    with pytest.raises(AssertionError):
        assert_quantiles(doc_shift(p, 2.0).float(), lambda q: sigma_quantile(q, shifted, LATENT_512), "S=2")
    asymmetric = CASES[CASE_IDS.index("sigma-S3-u_logit_normal-mean0.5")][1]
    u = torch.sigmoid(asymmetric.logit_mean + asymmetric.logit_std * torch.randn(N, generator=generator))
    ascending = doc_table(3.0).flip(0)[torch.floor(1000 * u).long().clamp(0, 999)]
    with pytest.raises(AssertionError):
        assert_quantiles(ascending.float(), lambda q: sigma_quantile(q, asymmetric, LATENT_512), "ascending")
    with pytest.raises(AssertionError):
        assert_same_distribution(p.float(), doc_shift(p, 2.0).float(), "S=2 against none")


# --- kohya's code: deterministic parts ---------------------------------------------------------------------

@pytest.mark.parametrize("latent_hw", [(32, 32), LATENT_512, (96, 96), LATENT_1024, (104, 152), (129, 127),
                                       (192, 192)])
def test_flux_shift_mu_matches_kohya(oracle, latent_hw):
    tokens = doc_tokens(latent_hw)
    assert flux_shift_mu(tokens) == pytest.approx(oracle.flux_shift_mu(tokens), abs=1e-12)


def test_kohya_mu_at_1024_is_1_15_and_its_time_shift_is_the_shift_with_e_to_the_mu(oracle):
    assert oracle.flux_shift_mu(4096) == pytest.approx(1.15, abs=1e-12)
    p = torch.linspace(0.001, 0.999, 999, dtype=torch.float32)
    for tokens in (1024, 4096, 3952):
        mu = oracle.flux_shift_mu(tokens)
        torch.testing.assert_close(shifted_sigmas(p.double(), math.exp(mu)).double(),
                                   oracle.flux_time_shift(mu, p).double(), rtol=0, atol=ATOL)


@pytest.mark.parametrize("shift", [1.0, 3.0, 3.1582, 0.5])
def test_sigma_table_matches_kohyas_scheduler(oracle, shift):
    timesteps, sigmas = oracle.flux_sigma_table(shift)
    assert sigmas.numel() == 1000
    torch.testing.assert_close(sigmas.double(), doc_table(shift), rtol=0, atol=ATOL)
    torch.testing.assert_close(timesteps.double(), 1000 * doc_table(shift), rtol=0, atol=1000 * ATOL)
    p = torch.arange(1000, 0, -1, dtype=torch.float64) / 1000
    torch.testing.assert_close(shifted_sigmas(p, shift).double(), sigmas.double(), rtol=0, atol=ATOL)


@pytest.mark.parametrize("mode", ["sigmoid", "shift", "flux_shift"])
@pytest.mark.parametrize("latent_hw", [LATENT_1024, (129, 127)])
def test_draws_at_one_half_match_kohya(oracle, mode, latent_hw):
    flow = settings(mode, sigmoid_scale=1e-30)
    torch.testing.assert_close(ours(flow, latent_hw, batch=16), kohya_draws(flow, latent_hw, batch=16),
                               rtol=0, atol=ATOL)


@pytest.mark.parametrize("u, index, shift", DEGENERATE_SIGMA)
def test_degenerate_sigma_mode_matches_kohya(oracle, u, index, shift):
    flow = degenerate("sigma", u, shift)
    theirs = kohya_draws(flow, LATENT_512, batch=16)
    _, table = oracle.flux_sigma_table(shift)
    torch.testing.assert_close(theirs, table[index].expand(16), rtol=0, atol=0)      # kohya: int(1000 u), t desc
    torch.testing.assert_close(ours(flow, LATENT_512, batch=16), theirs, rtol=0, atol=ATOL)


@pytest.mark.parametrize("u, shift, t", DEGENERATE_SD3)
def test_degenerate_logit_normal_mode_matches_kohya_sd3(oracle, u, shift, t):
    flow = degenerate("logit_normal", u, shift)
    theirs = kohya_draws(flow, LATENT_512, batch=16)
    torch.testing.assert_close(theirs.double(), torch.full((16,), t / 1000, dtype=torch.float64), rtol=0, atol=ATOL)
    torch.testing.assert_close(ours(flow, LATENT_512, batch=16), theirs, rtol=0, atol=ATOL)


def test_ours_in_sigma_mode_are_kohyas_table_entries(oracle):
    _, table = oracle.flux_sigma_table(3.0)
    assert distance_to_table(ours(settings("sigma"), LATENT_512), table) <= ATOL
    assert distance_to_table(kohya_case_draws("sigma-S3-u_none"), doc_table(3.0)) <= ATOL


# --- kohya's code: the distributions -----------------------------------------------------------------------

@pytest.mark.parametrize("case_id", CASE_IDS)
def test_draws_have_kohyas_distribution(oracle, case_id):
    _, flow, latent_hw = CASES[CASE_IDS.index(case_id)]
    assert_same_distribution(ours(flow, latent_hw), kohya_case_draws(case_id), case_id)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_closed_forms_describe_kohyas_draws(oracle, case_id):
    # the closed-form quantiles and moments the CI tests hold draw_sigmas to are kohya's
    _, flow, latent_hw = CASES[CASE_IDS.index(case_id)]
    theirs = kohya_case_draws(case_id)
    assert_quantiles(theirs, lambda q: sigma_quantile(q, flow, latent_hw), f"kohya {case_id}")
    assert_close_moments(theirs, closed_form_moments(case_id), f"kohya {case_id}")


# --- kohya's code: its other flow functions, against the doc -----------------------------------------------

@pytest.mark.parametrize("family", ["flux", "sd3"])
@pytest.mark.parametrize("scheme", ["none", "uniform", "logit_normal", "mode", "sigma_sqrt", "cosmap"])
def test_kohyas_density_is_the_docs(oracle, family, scheme):
    density = SimpleNamespace(weighting_scheme=scheme, logit_mean=-0.3, logit_std=1.3, mode_scale=1.29)
    u = oracle.compute_density_for_timestep_sampling(scheme, N, logit_mean=-0.3, logit_std=1.3, mode_scale=1.29,
                                                     seed=KOHYA_SEED, family=family)
    assert u.dtype == torch.float32 and tuple(u.shape) == (N,)
    assert_quantiles(u, lambda q: density_quantile(q, density), f"{family} {scheme} density")


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_kohyas_loss_weights_are_the_docs(oracle, family):
    s = torch.tensor([0.0, 0.001, 0.1, 0.5, 0.9, 1.0], dtype=torch.float32)
    sigma_sqrt = oracle.compute_loss_weighting_for_sd3("sigma_sqrt", s, family=family)
    assert math.isinf(float(sigma_sqrt[0]))         # kohya: s^-2 is infinite at s = 0, which SD3's t = 0 gives
    torch.testing.assert_close(sigma_sqrt[1:].double(), s[1:].double() ** -2, rtol=1e-6, atol=0)
    torch.testing.assert_close(oracle.compute_loss_weighting_for_sd3("cosmap", s, family=family).double(),
                               2 / (math.pi * (1 - 2 * s.double() + 2 * s.double() ** 2)), rtol=1e-6, atol=0)
    for scheme in ("none", "uniform", "logit_normal", "mode"):
        torch.testing.assert_close(oracle.compute_loss_weighting_for_sd3(scheme, s, family=family),
                                   torch.ones_like(s), rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["sigma", "uniform", "shift", "flux_shift", "logit_normal"])
def test_kohyas_noising_is_the_docs(oracle, mode):
    # x_t = (1 - s) x0 + s n; Flux passes timesteps 1000 s, SD3 its integer t = 1000 s
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(8, 16, 6, 10, generator=generator)
    noise = torch.randn(8, 16, 6, 10, generator=generator)
    if mode == "logit_normal":
        noisy, timesteps, sigmas = oracle.sd3_noisy_model_input_and_timesteps(latents, noise, KOHYA_SEED,
                                                                              weighting_scheme="logit_normal")
        torch.testing.assert_close(timesteps, timesteps.round(), rtol=0, atol=0)
    else:
        noisy, timesteps, sigmas = oracle.flux_noisy_model_input_and_timesteps(latents, noise, KOHYA_SEED,
                                                                               timestep_sampling=mode)
    assert tuple(sigmas.shape) == (8, 1, 1, 1)
    torch.testing.assert_close(timesteps.double(), 1000 * sigmas.flatten().double(), rtol=0, atol=1e-3)
    torch.testing.assert_close(noisy, (1 - sigmas) * latents + sigmas * noise, rtol=0, atol=1e-5)
