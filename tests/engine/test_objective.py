"""kohya's loss and noise options (trainer/objective.py, trainer/objective_settings.py).

Each formula is checked against values written from kohya's definitions here (python math, or a replay of the
generator), and, where sd-scripts is checked out ($SD_SCRIPTS_PATH, default ~/sd-scripts; CI has none),
against kohya's own functions: they are read out of library/custom_train_functions.py, library/train_util.py
and train_network.py with `ast` and run alone (train_util imports packages this venv lacks), with `torch`
and `random` in their globals replaced by shims that draw from our generator, so kohya's code sees the same
random numbers ours does.
"""

from __future__ import annotations

import __future__
import ast
import logging
import math
import os
import random
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from trainer.errors import ConfigError
from trainer.objective import (
    build_objective, draw_noise, draw_timesteps, elementwise_loss, huber_c_schedule, loss_weight_schedule,
    noisy_latents_and_target, per_sample_loss, per_sample_mse, scaled_linear_alphas_cumprod, snr_of,
    training_schedule, zero_terminal_snr_alphas_cumprod,
)
from trainer.objective_settings import ObjectiveSettings

SCHEDULE = scaled_linear_alphas_cumprod()
ALL_ON = ObjectiveSettings(noise_offset=0.1, noise_offset_random_strength=True, adaptive_noise_scale=0.05,
                           multires_noise_iterations=6, multires_noise_discount=0.3, ip_noise_gamma=0.1,
                           ip_noise_gamma_random_strength=True, min_timestep=50, max_timestep=950)


def todays_noisy_latents_and_target(latents, alphas_cumprod, prediction_type, generator):
    """The objective as it was before these options (frozen copy): every run made so far drew this."""
    batch = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device)
    timesteps = torch.randint(0, 1000, (batch,), generator=generator)
    alpha_bar = alphas_cumprod.to("cpu", torch.float64)[timesteps].view(batch, 1, 1, 1)
    sqrt_a = alpha_bar.sqrt().float().to(latents.device)
    sqrt_one_minus_a = (1.0 - alpha_bar).sqrt().float().to(latents.device)
    timesteps = timesteps.to(latents.device)
    noisy = sqrt_a * latents + sqrt_one_minus_a * noise
    target = noise if prediction_type == "epsilon" else sqrt_a * noise - sqrt_one_minus_a * latents
    return noisy, timesteps, target


def todays_per_sample_mse(prediction, target, masks=None):
    loss = torch.nn.functional.mse_loss(prediction.float(), target.float(), reduction="none")
    if masks is not None:
        loss = loss * masks
    return loss.mean(dim=(1, 2, 3))


def latents_for(seed=0, shape=(3, 4, 16, 12)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# --- settings ---------------------------------------------------------------------------------------------

def test_defaults_are_the_kohya_ss_gui_defaults():
    # bmaltais/kohya_ss kohya_gui/class_advanced_training.py @ 45088f04 (0 / False = the GUI sends no argument)
    gui = {"loss_type": "l2", "huber_schedule": "snr", "huber_c": 0.1, "huber_scale": 1.0, "min_snr_gamma": 0,
           "scale_v_pred_loss_like_noise_pred": False, "v_pred_like_loss": 0, "debiased_estimation": False,
           "noise_offset": 0, "noise_offset_random_strength": False, "adaptive_noise_scale": 0,
           "multires_noise_iterations": 0, "multires_noise_discount": 0.3, "ip_noise_gamma": 0,
           "ip_noise_gamma_random_strength": False, "min_timestep": 0, "max_timestep": 1000,
           "zero_terminal_snr": False}
    assert asdict(ObjectiveSettings()) == gui
    assert ObjectiveSettings().validated("epsilon") == ObjectiveSettings()
    assert ObjectiveSettings().describe() == "l2 loss"


def test_metadata_has_kohyas_values_and_none_when_off():
    metadata = ObjectiveSettings().metadata()
    # what kohya's train_network.py records for a kohya_ss GUI run with the defaults, after str()
    assert {key: str(value) for key, value in metadata.items()} == {
        "ss_loss_type": "l2", "ss_huber_schedule": "snr", "ss_huber_c": "0.1", "ss_huber_scale": "1.0",
        "ss_min_snr_gamma": "None", "ss_noise_offset": "None", "ss_noise_offset_random_strength": "False",
        "ss_adaptive_noise_scale": "None", "ss_multires_noise_iterations": "None",
        "ss_multires_noise_discount": "0.3", "ss_ip_noise_gamma": "None",
        "ss_ip_noise_gamma_random_strength": "False", "ss_debiased_estimation": "False",
        "ss_zero_terminal_snr": "False"}
    on = replace(ALL_ON, loss_type="huber", huber_schedule="exponential", min_snr_gamma=5,
                 debiased_estimation=True).metadata()
    assert on["ss_loss_type"] == "huber" and on["ss_huber_schedule"] == "exponential"
    assert str(on["ss_min_snr_gamma"]) == "5.0" and on["ss_noise_offset"] == 0.1
    assert on["ss_adaptive_noise_scale"] == 0.05 and on["ss_multires_noise_iterations"] == 6
    assert on["ss_ip_noise_gamma"] == 0.1 and on["ss_ip_noise_gamma_random_strength"] is True
    assert on["ss_noise_offset_random_strength"] is True and on["ss_debiased_estimation"] is True
    assert ObjectiveSettings().modelspec() == {}
    assert ALL_ON.modelspec() == {"modelspec.timestep_range": "50,950"}


@pytest.mark.parametrize("changes, prediction_type, message", [
    ({"loss_type": "mse"}, None, "loss_type"),
    ({"huber_schedule": "linear"}, None, "huber_schedule"),
    ({"loss_type": "huber", "huber_c": 0.0}, None, "huber_c"),
    ({"loss_type": "smooth_l1", "huber_c": 1.5}, None, "huber_c"),
    ({"loss_type": "huber", "huber_schedule": "constant", "huber_scale": 0.0}, None, "huber_scale"),
    ({"min_snr_gamma": -1}, None, "min_snr_gamma"),
    ({"min_snr_gamma": float("nan")}, None, "finite"),
    ({"noise_offset": 1.5}, None, "noise_offset"),
    ({"adaptive_noise_scale": 0.1}, None, "needs noise_offset"),
    ({"multires_noise_iterations": -1}, None, "multires_noise_iterations"),
    ({"multires_noise_discount": 2.0}, None, "multires_noise_discount"),
    ({"ip_noise_gamma": -0.1}, None, "ip_noise_gamma"),
    ({"min_timestep": 600, "max_timestep": 500}, None, "above max_timestep"),
    ({"max_timestep": 0}, None, "max_timestep"),
    ({"min_timestep": 1000, "max_timestep": 1000}, None, "min_timestep"),
    ({"scale_v_pred_loss_like_noise_pred": True}, "epsilon", "v-prediction models"),
    ({"v_pred_like_loss": 0.5}, "v_prediction", "already predicts v"),
    ({"zero_terminal_snr": True}, "epsilon", "zero_terminal_snr"),
])
def test_validation_names_the_setting_and_the_fix(changes, prediction_type, message):
    with pytest.raises(ConfigError, match=message):
        replace(ObjectiveSettings(), **changes).validated(prediction_type)


def test_validation_accepts_what_kohya_accepts():
    for settings, prediction_type in [
        (ALL_ON, "epsilon"), (replace(ALL_ON, min_timestep=500, max_timestep=500), "epsilon"),
        (ObjectiveSettings(min_snr_gamma=5, debiased_estimation=True, v_pred_like_loss=0.5), "epsilon"),
        (ObjectiveSettings(min_snr_gamma=5, scale_v_pred_loss_like_noise_pred=True, zero_terminal_snr=True),
         "v_prediction"),
        (ObjectiveSettings(loss_type="l1", huber_c=0.0), "epsilon"),      # huber_c unused by l1
    ]:
        assert settings.validated(prediction_type) is settings


def test_describe_says_what_runs():
    text = replace(ALL_ON, loss_type="smooth_l1", huber_schedule="constant", huber_c=0.2, min_snr_gamma=5,
                   debiased_estimation=True).describe()
    assert text == ("smooth_l1 loss (constant schedule, c 0.2, scale 1); min-SNR gamma 5; debiased estimation; "
                    "noise offset 0.1 (random strength), adaptive scale 0.05; multires noise 6 iteration(s), "
                    "discount 0.3; input perturbation gamma 0.1 (random strength); timesteps 50-949")
    assert ObjectiveSettings(loss_type="huber").describe() == "huber loss (snr schedule, c 0.1)"


# --- draws ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("seed, shape", [(0, (1, 4, 8, 8)), (7, (3, 4, 16, 12))])
def test_options_off_draw_exactly_what_runs_drew_before(prediction_type, seed, shape):
    latents = latents_for(seed, shape)
    old_generator, new_generator = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    objective = build_objective(ObjectiveSettings(), SCHEDULE, prediction_type)
    for draw in (lambda: noisy_latents_and_target(latents, SCHEDULE, prediction_type, new_generator),
                 lambda: objective.noisy_latents_and_target(latents, new_generator)):   # two steps in a row
        expected = todays_noisy_latents_and_target(latents, SCHEDULE, prediction_type, old_generator)
        for old, new in zip(expected, draw()):
            assert old.dtype == new.dtype and torch.equal(old, new)
    assert torch.equal(old_generator.get_state(), new_generator.get_state())


def test_options_off_loss_is_todays_mse_bit_for_bit():
    generator = torch.Generator().manual_seed(3)
    prediction, target = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    masks = torch.rand(2, 1, 8, 8, generator=generator)
    objective = build_objective(ObjectiveSettings(), SCHEDULE, "epsilon")
    timesteps = torch.tensor([3, 999])
    for mask in (None, masks):
        expected = todays_per_sample_mse(prediction, target, mask)
        assert torch.equal(per_sample_mse(prediction, target, mask), expected)
        assert torch.equal(objective.per_sample_loss(prediction, target, timesteps, mask), expected)
    loss = torch.rand(2)
    assert objective.post_process_loss(loss, timesteps) is loss and objective.weights is None
    assert objective.huber_c is None


def test_fixed_generator_repeats_every_draw_and_leaves_global_rngs_alone():
    latents = latents_for(1)
    objective = build_objective(ALL_ON, SCHEDULE, "v_prediction")
    torch.manual_seed(123)
    random.seed(123)
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    first = objective.noisy_latents_and_target(latents, torch.Generator().manual_seed(5))
    second = objective.noisy_latents_and_target(latents, torch.Generator().manual_seed(5))
    other = objective.noisy_latents_and_target(latents, torch.Generator().manual_seed(6))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], other[0])
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state


def test_noise_offset_and_its_random_strength_and_adaptive_scale():
    latents = latents_for(2) + torch.tensor([0.5, -1.0, 0.0, 2.0]).view(1, 4, 1, 1)
    b, c = latents.shape[:2]
    replay = torch.Generator().manual_seed(4)
    eps = torch.randn(latents.shape, generator=replay)
    offset_noise = torch.randn((b, c, 1, 1), generator=replay)
    got = draw_noise(latents, torch.Generator().manual_seed(4), ObjectiveSettings(noise_offset=0.1))
    assert torch.allclose(got, eps + 0.1 * offset_noise, atol=0, rtol=0)

    replay = torch.Generator().manual_seed(4)
    eps = torch.randn(latents.shape, generator=replay)
    strength = torch.rand(1, generator=replay).item() * 0.1          # U(0, noise_offset), once per batch
    offset_noise = torch.randn((b, c, 1, 1), generator=replay)
    settings = ObjectiveSettings(noise_offset=0.1, noise_offset_random_strength=True, adaptive_noise_scale=-0.2)
    got = draw_noise(latents, torch.Generator().manual_seed(4), settings)
    for i in range(b):
        for j in range(c):
            mean = abs(latents[i, j].mean().item())
            o = max(0.0, strength - 0.2 * mean)                       # clamp(o + s |mean_hw|, min=0)
            assert torch.allclose(got[i, j], eps[i, j] + o * offset_noise[i, j], atol=1e-6)
    assert got[0, 3].sub(eps[0, 3]).abs().max() == 0                   # |mean| 2 * 0.2 > o: clamped to 0


def test_multires_noise_is_kohyas_pyramid():
    latents = latents_for(3, (2, 4, 24, 16))
    settings = ObjectiveSettings(multires_noise_iterations=10, multires_noise_discount=0.4)
    replay = torch.Generator().manual_seed(9)
    expected = torch.randn(latents.shape, generator=replay)
    upsample = torch.nn.Upsample(size=(24, 16), mode="bilinear")
    levels = 0
    for i in range(10):
        r = torch.rand((), generator=replay, dtype=torch.float64).item() * 2 + 2     # r ~ U(2, 4)
        h, w = max(1, int(24 / r ** i)), max(1, int(16 / r ** i))
        expected = expected + upsample(torch.randn((2, 4, h, w), generator=replay)) * 0.4 ** i
        levels += 1
        if h == 1 or w == 1:
            break
    expected = expected / expected.std()
    generator = torch.Generator().manual_seed(9)
    got = draw_noise(latents, generator, settings)
    assert levels < 10                                                 # stopped at 1 px
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.equal(generator.get_state(), replay.get_state())
    assert abs(got.std().item() - 1.0) < 1e-5


def test_timesteps_range_and_a_fixed_timestep_draws_nothing():
    generator = torch.Generator().manual_seed(0)
    drawn = draw_timesteps(20000, generator, ObjectiveSettings(min_timestep=200, max_timestep=210))
    assert drawn.dtype == torch.int64 and set(drawn.tolist()) == set(range(200, 210))
    full = draw_timesteps(20000, generator, ObjectiveSettings())
    assert full.min() == 0 and full.max() == 999
    state = generator.get_state()
    fixed = draw_timesteps(4, generator, ObjectiveSettings(min_timestep=700, max_timestep=700))
    assert fixed.tolist() == [700] * 4 and torch.equal(generator.get_state(), state)


@pytest.mark.parametrize("random_strength", [False, True])
def test_ip_noise_gamma_perturbs_only_the_input(random_strength):
    latents = latents_for(4)
    settings = ObjectiveSettings(ip_noise_gamma=0.2, ip_noise_gamma_random_strength=random_strength)
    plain = noisy_latents_and_target(latents, SCHEDULE, "epsilon", torch.Generator().manual_seed(8))
    noisy, timesteps, target = noisy_latents_and_target(latents, SCHEDULE, "epsilon",
                                                        torch.Generator().manual_seed(8), settings)
    assert torch.equal(target, plain[2]) and torch.equal(timesteps, plain[1])   # the target stays eps
    replay = torch.Generator().manual_seed(8)
    eps = torch.randn(latents.shape, generator=replay)
    t = torch.randint(0, 1000, (latents.shape[0],), generator=replay)
    gamma = torch.rand(1, generator=replay).item() * 0.2 if random_strength else 0.2
    extra = torch.randn(latents.shape, generator=replay)
    a = SCHEDULE[t].view(-1, 1, 1, 1)
    expected = a.sqrt() * latents + (1 - a).sqrt() * (eps + gamma * extra)
    assert torch.allclose(noisy, expected.float(), atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_forward_process_and_target_per_element(prediction_type):
    latents = latents_for(5, (2, 4, 4, 4))
    timesteps = torch.tensor([0, 999])
    noisy, _, target = noisy_latents_and_target(latents, SCHEDULE, prediction_type,
                                                torch.Generator().manual_seed(2), timesteps=timesteps)
    eps = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2))
    for b, t in enumerate(timesteps.tolist()):
        betas = [(math.sqrt(0.00085) + (math.sqrt(0.012) - math.sqrt(0.00085)) * i / 999) ** 2 for i in range(1000)]
        a = math.prod(1 - beta for beta in betas[:t + 1])
        for index in [(0, 0, 0), (3, 2, 1)]:
            x0, e = latents[(b, *index)].item(), eps[(b, *index)].item()
            assert noisy[(b, *index)].item() == pytest.approx(math.sqrt(a) * x0 + math.sqrt(1 - a) * e, abs=1e-6)
            v = math.sqrt(a) * e - math.sqrt(1 - a) * x0
            assert target[(b, *index)].item() == pytest.approx(e if prediction_type == "epsilon" else v, abs=1e-6)


# --- loss -------------------------------------------------------------------------------------------------

def test_elementwise_losses_are_kohyas_formulas():
    p, t = torch.tensor([[0.0, 1.5, -2.0]]), torch.tensor([[0.3, -0.5, -2.0]])
    c = torch.tensor([0.25])
    for loss_type, formula in [
        ("l2", lambda d, c: d * d), ("l1", lambda d, c: abs(d)),
        ("huber", lambda d, c: 2 * c * (math.sqrt(d * d + c * c) - c)),
        ("smooth_l1", lambda d, c: 2 * (math.sqrt(d * d + c * c) - c)),
    ]:
        got = elementwise_loss(p, t, loss_type, c)
        expected = [formula(a - b, 0.25) for a, b in zip(p[0].tolist(), t[0].tolist())]
        assert got[0].tolist() == pytest.approx(expected, rel=1e-6, abs=1e-7), loss_type


@pytest.mark.parametrize("schedule", ["constant", "exponential", "snr"])
def test_huber_c_schedules(schedule):
    settings = ObjectiveSettings(loss_type="huber", huber_schedule=schedule, huber_c=0.2, huber_scale=1.5)
    table = huber_c_schedule(SCHEDULE, settings)
    for t in (0, 1, 500, 999):
        a = SCHEDULE[t].item()
        expected = {"constant": 0.2 * 1.5,
                    "exponential": 1.5 * math.exp(math.log(0.2) * t / 1000),
                    "snr": (1 - 0.2) / (1 + math.sqrt((1 - a) / a)) ** 2 + 0.2}[schedule]   # scale unused
        assert table[t].item() == pytest.approx(expected, rel=1e-12)
    assert huber_c_schedule(SCHEDULE, ObjectiveSettings()) is None


def test_huber_loss_per_sample_uses_each_samples_timestep_and_the_mask():
    settings = ObjectiveSettings(loss_type="huber", huber_schedule="exponential", huber_c=0.1)
    objective = build_objective(settings, SCHEDULE, "epsilon")
    generator = torch.Generator().manual_seed(1)
    prediction, target = torch.randn(2, 4, 4, 4, generator=generator), torch.randn(2, 4, 4, 4, generator=generator)
    masks = torch.rand(2, 1, 4, 4, generator=generator)
    timesteps = torch.tensor([10, 900])
    got = objective.per_sample_loss(prediction, target, timesteps, masks)
    for b, t in enumerate(timesteps.tolist()):
        c = math.exp(math.log(0.1) * t / 1000)
        d = (prediction[b] - target[b]).double()
        expected = (2 * c * ((d * d + c * c).sqrt() - c) * masks[b].double()).mean().item()
        assert got[b].item() == pytest.approx(expected, rel=1e-5)
    assert torch.equal(per_sample_loss(prediction, target, "l2", None, masks),
                       per_sample_mse(prediction, target, masks))


# --- loss weights -----------------------------------------------------------------------------------------

def snr_at(t, schedule=SCHEDULE):
    a = schedule[t].item()
    return a / (1 - a)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("gamma", [1.0, 5.0, 20.0])
def test_min_snr_gamma_for_both_prediction_types(prediction_type, gamma):
    weights = loss_weight_schedule(SCHEDULE, prediction_type, ObjectiveSettings(min_snr_gamma=gamma))
    for t in (0, 50, 200, 500, 999):
        snr = snr_at(t)
        expected = min(snr, gamma) / snr if prediction_type == "epsilon" else min(snr, gamma) / (snr + 1)
        assert weights[t].item() == pytest.approx(expected, rel=1e-12)
    objective = build_objective(ObjectiveSettings(min_snr_gamma=gamma), SCHEDULE, prediction_type)
    loss, timesteps = torch.tensor([2.0, 3.0]), torch.tensor([0, 999])
    assert objective.post_process_loss(loss, timesteps).tolist() == pytest.approx(
        [2.0 * weights[0].item(), 3.0 * weights[999].item()], rel=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_debiased_and_v_prediction_scalings(prediction_type):
    clamp = lambda snr: min(snr, 1000.0)            # noqa: E731  kohya: SNR is inf at t=0 in theory, so 1000
    debiased = loss_weight_schedule(SCHEDULE, prediction_type, ObjectiveSettings(debiased_estimation=True))
    for t in (0, 10, 999):
        s = clamp(snr_at(t))
        expected = 1 / math.sqrt(s) if prediction_type == "epsilon" else 1 / (s + 1)
        assert debiased[t].item() == pytest.approx(expected, rel=1e-12)
    assert snr_at(0) > 1000                           # so the clamp matters at t = 0
    if prediction_type == "v_prediction":
        scaled = loss_weight_schedule(SCHEDULE, prediction_type,
                                      ObjectiveSettings(scale_v_pred_loss_like_noise_pred=True))
        assert [scaled[t].item() for t in (0, 500)] == pytest.approx(
            [clamp(snr_at(t)) / (clamp(snr_at(t)) + 1) for t in (0, 500)], rel=1e-12)
    else:
        like = loss_weight_schedule(SCHEDULE, prediction_type, ObjectiveSettings(v_pred_like_loss=0.5))
        for t in (0, 500, 999):
            s = clamp(snr_at(t))
            assert like[t].item() == pytest.approx(1 + 0.5 / (s / (s + 1)), rel=1e-12)   # loss + 0.5 loss / scale
    combined = loss_weight_schedule(SCHEDULE, prediction_type,
                                    ObjectiveSettings(min_snr_gamma=5, debiased_estimation=True))
    snr_weights = loss_weight_schedule(SCHEDULE, prediction_type, ObjectiveSettings(min_snr_gamma=5))
    assert torch.allclose(combined, snr_weights * debiased, rtol=1e-14)
    assert loss_weight_schedule(SCHEDULE, prediction_type, ObjectiveSettings()) is None


def test_zero_terminal_snr_rescales_the_schedule_and_every_part_uses_it():
    fixed = zero_terminal_snr_alphas_cumprod(SCHEDULE)
    root, new_root = SCHEDULE.sqrt(), fixed.sqrt()
    expected = (root - root[-1]) * root[0] / (root[0] - root[-1])
    assert torch.allclose(new_root, expected, rtol=1e-12, atol=1e-15)
    assert fixed[-1].item() == 0.0 and fixed[0].item() == pytest.approx(SCHEDULE[0].item(), rel=1e-12)
    assert torch.equal(training_schedule(SCHEDULE, True), fixed) and torch.equal(training_schedule(SCHEDULE), SCHEDULE)
    assert snr_of(fixed)[-1].item() == 0.0
    settings = ObjectiveSettings(zero_terminal_snr=True, min_snr_gamma=5, loss_type="huber")
    objective = build_objective(settings, SCHEDULE, "v_prediction")
    assert torch.equal(objective.alphas_cumprod, fixed)
    assert objective.weights[999].item() == 0.0            # min(0, 5) / (0 + 1): no NaN, the step is unweighted
    assert objective.huber_c[999].item() == pytest.approx(0.1)   # sigma is infinite there: c = huber_c
    noisy, _, target = objective.noisy_latents_and_target(latents_for(6), torch.Generator().manual_seed(1),
                                                          timesteps=torch.tensor([999, 999, 999]))
    eps = torch.randn(latents_for(6).shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(noisy, eps) and torch.equal(target, -latents_for(6))    # pure noise; v = -x0
    with pytest.raises(ConfigError, match="zero_terminal_snr"):
        build_objective(settings, SCHEDULE, "epsilon")
    with pytest.raises(ConfigError, match="not finite"):      # a model whose own schedule ends at SNR 0
        build_objective(ObjectiveSettings(debiased_estimation=True), fixed, "epsilon")


# --- kohya's own functions --------------------------------------------------------------------------------

def sd_scripts() -> Path:
    return Path(os.environ.get("SD_SCRIPTS_PATH") or "~/sd-scripts").expanduser()


class GeneratorTorch:
    """`torch` as kohya's functions see it here: every random draw comes from `generator`, on the CPU."""

    def __init__(self, generator: torch.Generator):
        self._generator = generator

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def _size(size):
        return tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size

    def randn(self, *size, device=None, **_):
        return torch.randn(self._size(size), generator=self._generator, dtype=torch.float32).to(device or "cpu")

    def randn_like(self, tensor, device=None, **_):
        return torch.randn(tensor.shape, generator=self._generator, dtype=torch.float32).to(device or tensor.device)

    def rand(self, *size, device=None, **_):
        return torch.rand(self._size(size), generator=self._generator, dtype=torch.float32).to(device or "cpu")

    def randint(self, low, high, size, device=None, **_):
        return torch.randint(low, high, size, generator=self._generator).to(device or "cpu")


class GeneratorRandom:
    def __init__(self, generator: torch.Generator):
        self._generator = generator

    def random(self):
        return torch.rand((), generator=self._generator, dtype=torch.float64).item()


def kohya_functions(path: str, names: list[str], namespace: dict, class_name: str | None = None) -> dict:
    """The named top-level functions (or methods of `class_name`) of a kohya file, run in `namespace`."""
    file = sd_scripts() / path
    with warnings.catch_warnings():           # kohya's files have regex strings Python warns about
        warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
        tree = ast.parse(file.read_text(encoding="utf-8"))
    body = tree.body
    if class_name:
        body = next(node for node in body if isinstance(node, ast.ClassDef) and node.name == class_name).body
    picked = [node for node in body if isinstance(node, ast.FunctionDef) and node.name in names]
    assert sorted(node.name for node in picked) == sorted(names), f"kohya's {path} changed"
    code = compile(ast.Module(body=picked, type_ignores=[]), str(file), "exec",
                   flags=__future__.annotations.compiler_flag, dont_inherit=True)   # annotations stay unevaluated
    exec(code, namespace)
    return {name: namespace[name] for name in names}


CUSTOM = ["prepare_scheduler_for_custom_training", "fix_noise_scheduler_betas_for_zero_terminal_snr",
          "apply_snr_weight", "scale_v_prediction_loss_like_noise_prediction", "get_snr_scale",
          "add_v_prediction_like_loss", "apply_debiased_estimation", "pyramid_noise_like", "apply_noise_offset"]
TRAIN_UTIL = ["get_timesteps", "get_noise_noisy_latents_and_timesteps", "get_huber_threshold_if_needed",
              "conditional_loss"]


@pytest.fixture
def kohya():
    """kohya(generator) -> kohya's functions with their draws from `generator`."""
    for path in ("library/custom_train_functions.py", "library/train_util.py", "train_network.py"):
        if not (sd_scripts() / path).is_file():
            pytest.skip(f"kohya sd-scripts not found at {sd_scripts()} (dev-only oracle; CI has none): git clone "
                        "https://github.com/kohya-ss/sd-scripts there or set SD_SCRIPTS_PATH")
    pytest.importorskip("diffusers", reason="kohya's noise scheduler is diffusers' DDPMScheduler")

    def load(generator=None):
        generator = generator or torch.Generator().manual_seed(0)
        shim = {"torch": GeneratorTorch(generator), "random": GeneratorRandom(generator), "math": math,
                "logger": logging.getLogger("kohya-oracle")}
        custom = kohya_functions("library/custom_train_functions.py", CUSTOM, dict(shim))
        util = kohya_functions("library/train_util.py", TRAIN_UTIL,
                               dict(shim, custom_train_functions=SimpleNamespace(**custom)))
        post = kohya_functions("train_network.py", ["post_process_loss"], dict(shim, **custom), "NetworkTrainer")
        return SimpleNamespace(**custom, **util, **post)
    return load


def kohya_scheduler(kohya, zero_terminal_snr=False):
    """kohya's NetworkTrainer.get_noise_scheduler, in its order (all_snr before the zero-terminal-SNR fix)."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False)
    kohya.prepare_scheduler_for_custom_training(scheduler, "cpu")
    if zero_terminal_snr:
        kohya.fix_noise_scheduler_betas_for_zero_terminal_snr(scheduler)
    return scheduler


def kohya_args(settings: ObjectiveSettings, v_parameterization=False) -> SimpleNamespace:
    """kohya's argparse namespace for these settings, as the kohya_ss GUI passes them (0 -> None)."""
    values = asdict(settings)
    for name in ("noise_offset", "adaptive_noise_scale", "multires_noise_iterations", "ip_noise_gamma",
                 "min_snr_gamma", "v_pred_like_loss"):
        values[name] = values[name] or None
    values["debiased_estimation_loss"] = values.pop("debiased_estimation")
    return SimpleNamespace(**values, v_parameterization=v_parameterization)


@pytest.mark.parametrize("settings", [
    ObjectiveSettings(), ObjectiveSettings(noise_offset=0.1), ALL_ON,
    ObjectiveSettings(noise_offset=0.07, noise_offset_random_strength=True, adaptive_noise_scale=0.3),
    ObjectiveSettings(multires_noise_iterations=8, multires_noise_discount=0.8),
    ObjectiveSettings(ip_noise_gamma=0.1), ObjectiveSettings(ip_noise_gamma=0.1, ip_noise_gamma_random_strength=True),
    ObjectiveSettings(min_timestep=300, max_timestep=301), ObjectiveSettings(min_timestep=420, max_timestep=420),
], ids=lambda s: s.describe())
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_draws_equal_kohyas_get_noise_noisy_latents_and_timesteps(kohya, settings, prediction_type):
    latents = latents_for(7, (3, 4, 32, 24))
    kohya_generator = torch.Generator().manual_seed(11)
    functions = kohya(kohya_generator)
    scheduler = kohya_scheduler(functions)
    noise, kohya_noisy, kohya_t = functions.get_noise_noisy_latents_and_timesteps(
        kohya_args(settings, prediction_type == "v_prediction"), scheduler, latents)
    kohya_target = noise if prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, kohya_t)

    generator = torch.Generator().manual_seed(11)
    schedule = scheduler.alphas_cumprod.to(torch.float64)        # the same schedule, so only rounding differs
    noisy, timesteps, target = build_objective(settings, schedule, prediction_type).noisy_latents_and_target(
        latents, generator)
    assert torch.equal(timesteps, kohya_t)
    assert torch.equal(generator.get_state(), kohya_generator.get_state())    # the same draws, in the same order
    assert torch.allclose(noisy, kohya_noisy, atol=2e-6, rtol=1e-5)
    assert torch.allclose(target, kohya_target, atol=2e-6, rtol=1e-5)
    if prediction_type == "epsilon":
        assert torch.allclose(target, noise, atol=1e-6)


@pytest.mark.parametrize("loss_type, schedule", [("l2", "snr"), ("l1", "snr"), ("huber", "constant"),
                                                 ("huber", "exponential"), ("huber", "snr"),
                                                 ("smooth_l1", "constant"), ("smooth_l1", "exponential"),
                                                 ("smooth_l1", "snr")])
def test_loss_equals_kohyas_conditional_loss(kohya, loss_type, schedule):
    functions = kohya()
    scheduler = kohya_scheduler(functions)
    settings = ObjectiveSettings(loss_type=loss_type, huber_schedule=schedule, huber_c=0.15, huber_scale=1.3)
    generator = torch.Generator().manual_seed(2)
    prediction, target = torch.randn(4, 4, 8, 8, generator=generator), torch.randn(4, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([0, 17, 500, 999])
    huber_c = functions.get_huber_threshold_if_needed(kohya_args(settings), timesteps, scheduler)
    expected = functions.conditional_loss(prediction, target, loss_type, "none", huber_c).mean(dim=(1, 2, 3))
    objective = build_objective(settings, scheduler.alphas_cumprod.to(torch.float64), "epsilon")
    assert torch.allclose(objective.per_sample_loss(prediction, target, timesteps), expected, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("options", [
    {"min_snr_gamma": 5}, {"min_snr_gamma": 1}, {"debiased_estimation": True},
    {"min_snr_gamma": 5, "debiased_estimation": True}, {"scale_v_pred_loss_like_noise_pred": True},
    {"v_pred_like_loss": 0.5}, {"min_snr_gamma": 3, "scale_v_pred_loss_like_noise_pred": True},
], ids=str)
def test_loss_weights_equal_kohyas_post_process_loss(kohya, prediction_type, options):
    settings = ObjectiveSettings(**options)
    v = prediction_type == "v_prediction"
    if (settings.scale_v_pred_loss_like_noise_pred and not v) or (settings.v_pred_like_loss and v):
        with pytest.raises(ConfigError):         # kohya refuses this pairing, and so do we: nothing to compare
            settings.validated(prediction_type)
        return
    functions = kohya()
    scheduler = kohya_scheduler(functions)
    timesteps = torch.arange(1000)
    loss = torch.rand(1000, generator=torch.Generator().manual_seed(0)) + 0.5
    expected = functions.post_process_loss(None, loss, kohya_args(settings, v), timesteps, scheduler)
    objective = build_objective(settings, scheduler.alphas_cumprod.to(torch.float64), prediction_type)
    assert torch.allclose(objective.post_process_loss(loss, timesteps), expected, rtol=5e-5)


def test_zero_terminal_snr_equals_kohyas_fix_and_kohyas_snr_keeps_the_old_schedule(kohya):
    functions = kohya()
    original = kohya_scheduler(functions)
    fixed = kohya_scheduler(functions, zero_terminal_snr=True)
    ours = zero_terminal_snr_alphas_cumprod(original.alphas_cumprod.to(torch.float64))
    assert torch.allclose(ours, fixed.alphas_cumprod.to(torch.float64), atol=1e-6)
    assert fixed.alphas_cumprod[-1].item() == 0.0 and ours[-1].item() == 0.0
    # kohya's quirk, documented in trainer/objective.py: all_snr is from the schedule before the fix
    assert torch.equal(fixed.all_snr, original.all_snr) and fixed.all_snr[-1].item() > 0
    assert snr_of(ours)[-1].item() == 0.0


def test_noise_scheduler_is_kohyas(kohya):
    scheduler = kohya_scheduler(kohya())
    assert torch.allclose(SCHEDULE, scheduler.alphas_cumprod.to(torch.float64), rtol=1e-6)
    assert torch.allclose(snr_of(SCHEDULE), scheduler.all_snr.to(torch.float64), rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_draws_repeat_on_the_gpu():
    latents = latents_for(8)
    cpu = build_objective(ALL_ON, SCHEDULE, "v_prediction").noisy_latents_and_target(
        latents, torch.Generator().manual_seed(3))
    gpu = build_objective(ALL_ON, SCHEDULE, "v_prediction", "cuda").noisy_latents_and_target(
        latents.cuda(), torch.Generator().manual_seed(3))
    assert torch.equal(cpu[1], gpu[1].cpu())
    assert torch.allclose(cpu[0], gpu[0].cpu(), atol=1e-6) and torch.allclose(cpu[2], gpu[2].cpu(), atol=1e-6)
