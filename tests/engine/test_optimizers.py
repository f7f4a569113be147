"""Every optimizer type of the table: builds, steps and lowers a toy loss on CPU, and resumes exactly from
Train's saved state; the effective lr; the missing-package fallbacks and errors; the strict extra arguments."""

from __future__ import annotations

import math
import subprocess
import sys
import types

import pytest
import torch
from torch import nn

from tests.reference_data import REPO_ROOT
from trainer.errors import ConfigError
from trainer.networks import LoRANetwork, NetworkConfig
from trainer.optimizers import (OPTIMIZERS, OptimizerConfig, build_optimizer, effective_learning_rate,
                                effective_learning_rates, packages)
from trainer.resume import TrainState, load_state, save_state

# the package each type's tests need; a missing one skips, saying so (all are in pyproject's [test] extra)
NEEDS = {t.name: t.package.module for t in OPTIMIZERS.values() if t.package}

# a learning rate (and arguments) each type trains the toy with in 40 steps; the types' own defaults otherwise
SETTINGS = {
    "AdamW": (3e-3, ""), "AdamW8bit": (3e-3, ""), "PagedAdamW8bit": (3e-3, ""), "PagedAdamW": (3e-3, ""),
    "PagedAdamW32bit": (3e-3, ""), "Lion": (1e-3, ""), "Lion8bit": (1e-3, ""), "PagedLion8bit": (1e-3, ""),
    "SGDNesterov": (0.05, ""), "SGDNesterov8bit": (0.05, ""), "DAdaptation": (0.1, ""), "DAdaptAdam": (0.1, ""),
    "DAdaptAdaGrad": (1.0, "d0=1e-4"), "DAdaptAdan": (1.0, ""), "DAdaptAdanIP": (1.0, ""), "DAdaptLion": (1.0, ""),
    "DAdaptSGD": (0.5, "growth_rate=1.5"), "Prodigy": (1.0, ""), "Adafactor": (1e-4, "scale_parameter=false"),
}


def needs_package(name: str) -> None:
    if name in NEEDS:
        pytest.importorskip(NEEDS[name], reason=f"{name} needs {NEEDS[name]} (pip install '.[test]' installs it)")


def toy_problem():
    """A UNet-like and a text-encoder-like layer, frozen, and targets that a low-rank update of each reaches.
    The UNet layer's LoRA tensors have 4096 elements, so the 8-bit types keep 8-bit state for them."""
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet, text = nn.Linear(256, 256), nn.Linear(64, 64)
    for layer in (unet, text):
        layer.requires_grad_(False)
    x, xt = torch.randn(32, 256, generator=generator), torch.randn(32, 64, generator=generator)
    delta = torch.randn(256, 4, generator=generator) @ torch.randn(4, 256, generator=generator) * 0.05
    delta_t = torch.randn(64, 2, generator=generator) @ torch.randn(2, 64, generator=generator) * 0.05
    targets = {"lora_unet_x": unet, "lora_te_text_model_x": text}
    return targets, (x, unet(x) + x @ delta.T, xt, text(xt) + xt @ delta_t.T)


def new_network(targets) -> LoRANetwork:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return LoRANetwork(targets, NetworkConfig(rank=16, alpha=16, train_on="both"))


def config_for(name: str, **overrides) -> OptimizerConfig:
    lr, extra = SETTINGS[name]
    values = dict(optimizer_type=name, learning_rate=lr, text_encoder_lr=lr, scheduler="constant", warmup_ratio=0.0,
                  extra_args=extra)
    return OptimizerConfig(**{**values, **overrides})


def toy_loss(targets, data) -> torch.Tensor:
    x, y, xt, yt = data
    return ((targets["lora_unet_x"](x) - y) ** 2).mean() + ((targets["lora_te_text_model_x"](xt) - yt) ** 2).mean()


def run_steps(network, targets, data, optimizer, scheduler, steps: int) -> list[float]:
    losses = []
    with network.attached(targets):
        for _ in range(steps):
            loss = toy_loss(targets, data)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            losses.append(loss.item())
    return losses


def built(name: str, targets, total_steps: int = 40, **overrides):
    config = config_for(name, **overrides).validated()
    network = new_network(targets)
    groups = network.parameter_groups(config.learning_rate, config.text_encoder_lr)
    optimizer, scheduler = build_optimizer(config, groups, total_steps)
    return config, network, optimizer, scheduler


def test_the_table_covers_every_type_the_issue_and_kohya_name():
    assert set(SETTINGS) == set(OPTIMIZERS)
    kohya = {"AdamW", "AdamW8bit", "PagedAdamW8bit", "Lion", "Lion8bit", "PagedLion8bit", "SGDNesterov",
             "SGDNesterov8bit", "DAdaptation", "DAdaptAdaGrad", "DAdaptAdam", "DAdaptAdan", "DAdaptAdanIP",
             "DAdaptLion", "DAdaptSGD", "Prodigy", "Adafactor"}
    assert kohya <= set(OPTIMIZERS)
    for spec in OPTIMIZERS.values():
        assert not spec.twin or (spec.package.module == "bitsandbytes" and OPTIMIZERS[spec.twin].package is not
                                 packages.BITSANDBYTES)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_table_names_the_real_class_and_its_defaults(name):
    """kohya's class string is the class's module + name, and every argument's default is the class's own."""
    import inspect

    needs_package(name)
    spec = OPTIMIZERS[name]
    cls = spec.optimizer_class()
    assert f"{cls.__module__}.{cls.__name__}" == spec.kohya_class
    signature = inspect.signature(cls.__init__).parameters
    for argument in spec.arguments:
        assert argument.name in signature, (name, argument.name)
        default = signature[argument.name].default
        assert default == argument.default or (isinstance(default, tuple) and tuple(default) == argument.default), \
            (name, argument.name, default, argument.default)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_type_lowers_the_loss_and_resumes_exactly_from_saved_state(name, tmp_path):
    needs_package(name)
    targets, data = toy_problem()
    config, network, optimizer, scheduler = built(name, targets)
    assert type(optimizer).__name__ == config.spec.class_name and not config.fallback_from
    losses = run_steps(network, targets, data, optimizer, scheduler, 40)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.99 * losses[0], (name, losses[0], losses[-1])

    # Train's resumable state: save after 5 steps, load into a new network and optimizer, take one more step
    targets, data = toy_problem()
    _, network, optimizer, scheduler = built(name, targets)
    run_steps(network, targets, data, optimizer, scheduler, 5)
    state = TrainState({}, 5, [], [], network.kohya_state_dict(), optimizer.state_dict(), scheduler.state_dict(), {},
                       torch.zeros(1))
    loaded = load_state(save_state(str(tmp_path / "state"), state))
    _, again, optimizer_2, scheduler_2 = built(name, targets)
    again.load_kohya_state_dict(loaded.network)
    optimizer_2.load_state_dict(loaded.optimizer)
    scheduler_2.load_state_dict(loaded.scheduler)
    if name.endswith("8bit"):
        quantised = [s for s in optimizer_2.state.values() if s.get("state1", torch.zeros(0)).dtype == torch.uint8]
        assert quantised, "the 8-bit state did not come back as 8-bit"
    run_steps(network, targets, data, optimizer, scheduler, 1)
    run_steps(again, targets, data, optimizer_2, scheduler_2, 1)
    for key, value in network.kohya_state_dict().items():
        assert torch.equal(value, again.kohya_state_dict()[key]), (name, key)
    assert effective_learning_rates(optimizer) == effective_learning_rates(optimizer_2)


@pytest.mark.parametrize("name", ["Prodigy", "DAdaptAdam"])
def test_effective_lr_is_d_times_lr_from_the_optimizers_own_state(name):
    needs_package(name)
    targets, data = toy_problem()
    config, network, optimizer, scheduler = built(name, targets, scheduler="cosine", warmup_ratio=0.2)
    seen = []
    with network.attached(targets):
        for _ in range(20):
            loss = toy_loss(targets, data)
            loss.backward()
            optimizer.step()
            for index, group in enumerate(optimizer.param_groups):
                assert effective_learning_rate(optimizer, index) == group["d"] * group["lr"]
            seen.append((effective_learning_rate(optimizer), optimizer.param_groups[0]["d"]))
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
    assert seen[-1][1] > 1e-6 * 10, "d never grew: the test would not tell d * lr from lr"
    assert len({round(lr, 12) for lr, _ in seen}) > 5


def test_effective_lr_of_adafactor_is_its_relative_step():
    """As transformers' own AdafactorSchedule reports it (kohya's `adafactor` schedule)."""
    pytest.importorskip("transformers", reason="Adafactor is transformers' (pip install '.[test]')")
    targets, data = toy_problem()
    config, network, optimizer, scheduler = built("Adafactor", targets, extra_args="")
    assert config.effective_scheduler() == "adafactor" and config.optimizer_string().endswith("(relative_step=True)")
    with network.attached(targets):
        for step in range(1, 4):
            toy_loss(targets, data).backward()
            optimizer.step()
            group = optimizer.param_groups[0]
            first = next(p for p in group["params"] if p.grad is not None)
            assert effective_learning_rate(optimizer) == pytest.approx(
                float(type(optimizer)._get_lr(group, optimizer.state[first])), rel=1e-6)  # theirs in float32
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
    assert scheduler.get_last_lr()[0] == config.learning_rate        # the reported lr; Adafactor ignores it


def test_adaptive_optimizers_take_the_first_groups_lr_for_every_group_with_a_warning(caplog):
    """Prodigy and DAdaptation refuse different lrs per group: kohya's first group (the text encoder's) counts."""
    needs_package("Prodigy")
    targets, data = toy_problem()
    config = OptimizerConfig(optimizer_type="Prodigy", learning_rate=1.0, text_encoder_lr=0.5,
                             loraplus_lr_ratio=4, scheduler="constant", warmup_ratio=0.0).validated()
    network = new_network(targets)
    groups = network.parameter_groups(1.0, 0.5, 4)
    assert len({g["lr"] for g in groups}) > 1
    with caplog.at_level("WARNING"):
        optimizer, scheduler = build_optimizer(config, groups, 10)
    assert {g["lr"] for g in optimizer.param_groups} == {0.5}
    assert "only the first group's lr counts" in caplog.text and "LoRA+ ratio has no effect" in caplog.text
    assert [g["name"] for g in optimizer.param_groups] == [g["name"] for g in groups]      # same order as given
    run_steps(network, targets, data, optimizer, scheduler, 2)                           # no RuntimeError


def test_adaptive_optimizer_with_a_small_lr_warns_on_the_node_text():
    config = OptimizerConfig(optimizer_type="DAdaptAdam", learning_rate=1e-4, text_encoder_lr=1e-4)
    warnings = " ".join(config.warnings())
    assert "set the learning rate around 1.0" in warnings and "first group" not in warnings
    assert "warning: DAdaptAdam finds its own step size" in config.describe()
    assert OptimizerConfig(optimizer_type="Prodigy", learning_rate=1.0, text_encoder_lr=1.0).warnings() == []


def test_paged_types_on_cpu_show_bitsandbytes_own_fallback():
    warnings = OptimizerConfig(optimizer_type="PagedAdamW8bit").warnings("cpu")
    assert any("Paged optimizers are not supported on CPU" in w for w in warnings)
    assert not OptimizerConfig(optimizer_type="PagedAdamW8bit").warnings("cuda")


# ---- packages: missing, broken, too old ----------------------------------------------------------------------

def stand_in(monkeypatch, module: str, outcome) -> None:
    """Make importing `module` fail with `outcome` (an exception) or give `outcome` (a module)."""
    real = packages.import_module

    def fake(name):
        if name == module:
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        return real(name)
    monkeypatch.setattr(packages, "import_module", fake)


@pytest.mark.parametrize("outcome, reason", [
    (ImportError("No module named 'bitsandbytes'"), "bitsandbytes is not installed"),
    (OSError("libbitsandbytes_cuda128.so: cannot open shared object file"),
     "bitsandbytes is installed but fails to import (OSError: libbitsandbytes"),
    (types.SimpleNamespace(__version__="0.45.5"), "bitsandbytes 0.45.5 is too old: 0.50 or newer"),
])
@pytest.mark.parametrize("name, twin, twin_class", [
    ("AdamW8bit", "AdamW", "torch.optim.adamw.AdamW"), ("PagedAdamW8bit", "AdamW", "torch.optim.adamw.AdamW"),
    ("SGDNesterov8bit", "SGDNesterov", "torch.optim.sgd.SGD(momentum=0.9)"),
    ("Lion8bit", "Lion", "lion_pytorch.lion_pytorch.Lion"),
])
def test_bitsandbytes_types_fall_back_to_their_twin_and_record_it(monkeypatch, outcome, reason, name, twin,
                                                                     twin_class):
    needs_package(twin)
    stand_in(monkeypatch, "bitsandbytes", outcome)
    config = OptimizerConfig(optimizer_type=name, extra_args="min_8bit_size=16").validated()
    assert (config.optimizer_type, config.fallback_from) == (twin, name)
    assert config.optimizer_string() == twin_class          # ss_optimizer names what ran
    warning = config.warnings()[0]
    assert f"{name} needs bitsandbytes: {reason}" in warning and f"Training runs {twin}" in warning
    assert "pip install" in warning and "bitsandbytes>=0.50" in warning
    assert config.validated() == config
    optimizer, _ = build_optimizer(config, [nn.Parameter(torch.zeros(4))], 10)
    assert f"{type(optimizer).__module__}.{type(optimizer).__name__}" == OPTIMIZERS[twin].kohya_class


def test_lion8bit_without_bitsandbytes_or_lion_pytorch_names_both_installs(monkeypatch):
    real = packages.import_module

    def fake(name):
        if name in ("bitsandbytes", "lion_pytorch"):
            raise ImportError(name)
        return real(name)
    monkeypatch.setattr(packages, "import_module", fake)
    with pytest.raises(ConfigError) as error:
        OptimizerConfig(optimizer_type="Lion8bit").validated()
    text = str(error.value)
    assert "bitsandbytes>=0.50" in text and "lion-pytorch" in text and sys.executable in text


@pytest.mark.parametrize("name, module, requirement", [
    ("Prodigy", "prodigyopt", "prodigyopt>=1.0"), ("DAdaptAdam", "dadaptation", "dadaptation>=3.1"),
    ("DAdaptation", "dadaptation", "dadaptation>=3.1"), ("Lion", "lion_pytorch", "lion-pytorch>=0.1"),
])
def test_types_without_a_twin_stop_before_training_with_the_install_command(monkeypatch, name, module, requirement):
    stand_in(monkeypatch, module, ImportError(module))
    with pytest.raises(ConfigError) as error:
        build_optimizer(OptimizerConfig(optimizer_type=name, learning_rate=1.0), [nn.Parameter(torch.zeros(2))], 5)
    text = str(error.value)
    assert f'"{sys.executable}" -m pip install "{requirement}"' in text, text
    assert "not installed" in text and "restart ComfyUI" in text


def test_importing_the_pack_imports_no_optimizer_package():
    code = ("import sys; import trainer.optim, trainer.optimizers, trainer.schedules, trainer.loop; "
            "loaded = [m for m in ('bitsandbytes', 'prodigyopt', 'dadaptation', 'lion_pytorch') if m in sys.modules]; "
            "print(loaded); sys.exit(1 if loaded else 0)")
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr


# ---- arguments -----------------------------------------------------------------------------------------------

def test_extra_arguments_are_typed_and_passed_as_kohya_writes_them():
    needs_package("Prodigy")
    config = OptimizerConfig(optimizer_type="Prodigy", learning_rate=1.0, d_coef=0.5, decouple=False,
                             extra_args="betas=0.9, 0.99\n growth_rate=1.02 beta3=None slice_p=11").validated()
    assert config.explicit_arguments() == {"d_coef": 0.5, "decouple": False, "betas": (0.9, 0.99),
                                           "growth_rate": 1.02, "beta3": None, "slice_p": 11}
    assert config.optimizer_string() == ("prodigyopt.prodigy.Prodigy(d_coef=0.5,decouple=False,betas=(0.9, 0.99),"
                                         "growth_rate=1.02,beta3=None,slice_p=11)")
    optimizer, _ = build_optimizer(config, [nn.Parameter(torch.zeros(3))], 10)
    group = optimizer.param_groups[0]
    assert (group["d_coef"], group["betas"], group["growth_rate"], group["slice_p"]) == (0.5, (0.9, 0.99), 1.02, 11)


@pytest.mark.parametrize("extra, message", [
    ("d_coef=0.5", "AdamW has no argument 'd_coef'. Valid ones: betas, eps, weight_decay, amsgrad"),
    ("betas=0.9", "betas=0.9 is not two numbers; write e.g. betas=0.9,0.999"),
    ("amsgrad=maybe", "amsgrad=maybe is not true or false"),
    ("eps", "'eps' is not key=value"),
    ("eps=1e-7 eps=1e-6", "eps is given twice"),
    ("lr=1", "set the learning rate with learning_rate"),
    ("weight_decay=0.1", "weight_decay is set on the Optimizer node (0.02) and in its extra arguments (0.1)"),
])
def test_bad_extra_arguments_say_what_is_valid(extra, message):
    with pytest.raises(ConfigError) as error:
        OptimizerConfig(optimizer_type="AdamW", weight_decay=0.02, extra_args=extra).validated()
    assert message in str(error.value)


def test_an_argument_the_optimizer_refuses_is_a_config_error_not_a_stack_trace():
    with pytest.raises(ConfigError, match=r"AdamW refused its arguments \(betas=\(0.9, 1.5\)\): .*beta"):
        build_optimizer(OptimizerConfig(extra_args="betas=0.9,1.5"), [nn.Parameter(torch.zeros(2))], 10)


def test_node_arguments_a_type_does_not_take_are_ignored_with_a_warning():
    config = OptimizerConfig(optimizer_type="AdamW", d_coef=0.5, relative_step=False, weight_decay=0.05).validated()
    assert config.explicit_arguments() == {"weight_decay": 0.05}
    warnings = config.warnings()
    assert any(w.startswith("d_coef is not an argument of AdamW") for w in warnings)
    assert any(w.startswith("relative_step is not an argument of AdamW") for w in warnings)
    assert config.ignored_arguments() == ["d_coef", "relative_step"]
    adafactor = OptimizerConfig(optimizer_type="Adafactor", eps=1e-6)          # its eps is a pair
    assert adafactor.ignored_arguments() == ["eps"]


@pytest.mark.parametrize("values, message", [
    ({"optimizer_type": "Adam"}, "Optimizer type 'Adam' is unknown; choose one of AdamW, AdamW8bit"),
    ({"scheduler": "cosine_annealing"}, "Scheduler 'cosine_annealing' is unknown"),
    ({"warmup_ratio": 0.1, "warmup_step_count": 5}, "Warmup is given twice"),
    ({"scheduler": "adafactor"}, "The adafactor schedule is Adafactor's relative step"),
    ({"optimizer_type": "Adafactor", "relative_step": False, "scheduler": "adafactor"}, "relative_step"),
    ({"scheduler": "polynomial", "learning_rate": 1e-8, "text_encoder_lr": 0}, "polynomial schedule decays to 1e-07"),
    ({"betas": (0.9, 1.0)}, "each must be in [0, 1)"),
    ({"eps": 0.0}, "eps is 0.0; use a number above 0"),
    ({"num_cycles": 0}, "lr_scheduler_num_cycles is 0"),
])
def test_bad_settings_are_config_errors_that_say_how_to_fix_them(values, message):
    with pytest.raises(ConfigError) as error:
        OptimizerConfig(**values).validated()
    assert message in str(error.value)


def test_adafactor_with_relative_step_runs_its_own_schedule_without_warmup():
    config = OptimizerConfig(optimizer_type="Adafactor", scheduler="cosine", warmup_ratio=0.1).validated()
    assert config.effective_scheduler() == "adafactor" and config.warmup_steps(100) == 0
    assert config.scheduler_string() == "adafactor:0.0001"            # kohya's ss_lr_scheduler
    warnings = " ".join(config.warnings())
    assert "adafactor schedule runs instead of cosine" in warnings and "lr_warmup is not used" in warnings
    manual = OptimizerConfig(optimizer_type="Adafactor", relative_step=False, scheduler="constant_with_warmup")
    assert manual.validated().effective_scheduler() == "constant_with_warmup"
    assert "kohya suggests max_grad_norm 0" in " ".join(manual.warnings())
    forced = OptimizerConfig(optimizer_type="Adafactor", relative_step=False, extra_args="warmup_init=true")
    assert forced.explicit_arguments()["relative_step"] is True      # kohya: warmup_init needs the relative step


def test_a_learning_rate_of_0_leaves_that_part_out_of_the_optimizer():
    """kohya drops a group whose lr is 0: that part's LoRA stays as it is (here the text encoder's)."""
    targets, data = toy_problem()
    network = new_network(targets)
    config = OptimizerConfig(learning_rate=1e-3, text_encoder_lr=0.0, scheduler="constant", warmup_ratio=0.0)
    optimizer, scheduler = build_optimizer(config, network.parameter_groups(1e-3, 0.0), 5)
    assert [group["name"] for group in optimizer.param_groups] == ["unet"]
    before = {k: v.clone() for k, v in network.kohya_state_dict().items() if k.startswith("lora_te")}
    run_steps(network, targets, data, optimizer, scheduler, 2)
    assert all(torch.equal(value, network.kohya_state_dict()[key]) for key, value in before.items())
    with pytest.raises(ConfigError, match="Every learning rate of this run is 0"):
        build_optimizer(config, [], 5)
    # every lr 0: the groups stay (a baseline run that changes nothing)
    baseline, schedule = build_optimizer(config, network.parameter_groups(0.0, 0.0), 5)
    before = {k: v.clone() for k, v in network.kohya_state_dict().items()}
    run_steps(network, targets, data, baseline, schedule, 2)
    assert all(torch.equal(value, network.kohya_state_dict()[key]) for key, value in before.items())


def test_torchs_adamw_takes_its_fused_kernel_on_cuda():
    """One fused launch per step on a GPU; the CPU keeps torch's default.
    (torch builds a fused AdamW over CPU tensors too, so the choice can be checked without a GPU.)"""
    from trainer.optimizers.build import _construct

    def built(device_type):
        config = OptimizerConfig(optimizer_type="AdamW").validated()
        groups = [{"params": [nn.Parameter(torch.zeros(3))], "lr": 1e-4}]
        return _construct(config.spec, config, groups, device_type).defaults

    assert built("cuda")["fused"] is True
    assert not built("cpu")["fused"]
    sgd = OptimizerConfig(optimizer_type="SGDNesterov").validated()
    assert not _construct(sgd.spec, sgd, [{"params": [nn.Parameter(torch.zeros(3))], "lr": 1e-4}], "cuda").defaults.get(
        "fused")
