"""The run layer without ComfyUI (what the command line will use): names, files, record, Cancel and resume."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.engine.test_train_loop import Cancelled, cancel_at_check, fresh_model, small_cache
from trainer.networks import NetworkConfig
from trainer.optim import OptimizerConfig
from trainer.plan import TrainSettings
from trainer.session import RunFolders, run_session


def test_a_session_writes_its_files_keeps_work_on_cancel_and_resumes_exactly(tmp_path, tiny_vae_encoder):
    cache = small_cache(tmp_path, tiny_vae_encoder)
    folders = RunFolders(str(tmp_path / "loras"), str(tmp_path / "runs"))
    os.makedirs(folders.loras)
    args = (NetworkConfig(rank=2), OptimizerConfig(optimizer_type="AdamW", learning_rate=1e-3))
    settings = TrainSettings(output_name="cli", epochs=3, batch_size=2, save_every_n_epochs=1)
    events = []

    class Sink:
        def __init__(self, total):
            events.append(("total", total))

        def update(self, value, text=None, event=None):
            events.append(("step", value))

    whole = run_session(fresh_model(), cache, *args, settings, folders, progress=Sink)
    assert whole.run_name == "cli" and ("total", 9) in events and ("step", 9) in events
    assert sorted(os.listdir(folders.loras)) == ["cli-000001.safetensors", "cli-000002.safetensors"]
    with open(os.path.join(folders.run_folder("cli"), "run.json"), encoding="utf-8") as handle:
        assert json.load(handle)["status"] == "finished"

    with pytest.raises(Cancelled):
        run_session(fresh_model(), cache, *args, settings, folders, check_cancel=cancel_at_check(5),
                    is_cancel=lambda exc: isinstance(exc, Cancelled))
    assert "cli_2-interrupted.safetensors" in os.listdir(folders.loras)          # a taken name gets _2
    with open(os.path.join(folders.run_folder("cli_2"), "run.json"), encoding="utf-8") as handle:
        assert json.load(handle)["status"] == "cancelled"
    charted = []

    class ChartSink:                     # what the page's chart receives: a start, then one event per step
        def __init__(self, total):
            pass

        def update(self, value, text=None, event=None):
            if event is not None:
                charted.append(event)

    resumed = run_session(fresh_model(), cache, *args, settings, folders, resume_from="cli_2", progress=ChartSink)
    assert resumed.run_name == "cli_2" and resumed.result.progress.losses == whole.result.progress.losses
    start, steps = charted[0], [event for event in charted if "loss" in event]
    assert start["started"] and start["run"] == "cli_2" and start["step"] == 4 and start["total"] == 9
    assert start["history"]["steps"] == [1, 2, 3, 4]                          # the chart starts with the run so far
    assert start["history"]["losses"] == whole.result.progress.losses[:4]
    assert [event["step"] for event in steps] == [5, 6, 7, 8, 9] and steps[-1]["epoch"] == 3 == steps[-1]["epochs"]
    assert all(torch.equal(resumed.lora.tensors[k], whole.lora.tensors[k]) for k in whole.lora.tensors)
    assert resumed.loss_image.size[0] > 0 and "trained 9 step(s), 5 in this session" in resumed.summary


def test_a_run_without_a_state_names_the_runs_that_can_resume(tmp_path, tiny_vae_encoder):
    from trainer.errors import ConfigError
    from trainer.session import resumable_runs

    cache = small_cache(tmp_path, tiny_vae_encoder)
    folders = RunFolders(str(tmp_path / "loras"), str(tmp_path / "runs"))
    os.makedirs(folders.loras)
    run_session(fresh_model(), cache, NetworkConfig(rank=2), OptimizerConfig(optimizer_type="AdamW"),
                TrainSettings(output_name="saved", epochs=2, batch_size=2, save_every_n_steps=2), folders)
    assert resumable_runs(folders) == []                # it finished: nothing to resume
    with pytest.raises(ConfigError, match="finished at step 6: there is nothing to resume"):
        run_session(fresh_model(), cache, NetworkConfig(rank=2), OptimizerConfig(optimizer_type="AdamW"),
                    TrainSettings(epochs=1), folders, resume_from="saved")
    log_path = os.path.join(folders.run_folder("saved"), "run.json")
    with open(log_path, encoding="utf-8") as handle:
        log = json.load(handle)
    log["status"] = "running"                           # as a run killed after its save at step 4 left it
    with open(log_path, "w", encoding="utf-8") as handle:
        json.dump(log, handle)
    assert resumable_runs(folders) == [("saved", 4)]
    with pytest.raises(ConfigError, match=r"Runs that can resume: saved \(step 4\)"):
        run_session(fresh_model(), cache, NetworkConfig(rank=2), OptimizerConfig(optimizer_type="AdamW"),
                    TrainSettings(epochs=1), folders, resume_from="nothing")


def test_keep_last_n_counts_the_states_cancel_writes(tmp_path, tiny_vae_encoder):
    cache = small_cache(tmp_path, tiny_vae_encoder)
    folders = RunFolders(str(tmp_path / "loras"), str(tmp_path / "runs"))
    os.makedirs(folders.loras)
    settings = TrainSettings(output_name="kept", epochs=4, batch_size=2, save_every_n_steps=2, keep_last_n=2)
    with pytest.raises(Cancelled):           # saves at steps 2 and 4, then Cancel's at step 5
        run_session(fresh_model(), cache, NetworkConfig(rank=2), OptimizerConfig(optimizer_type="AdamW"), settings,
                    folders, check_cancel=cancel_at_check(6))
    assert sorted(os.listdir(folders.loras)) == ["kept-interrupted.safetensors", "kept-step00000004.safetensors"]
    assert sorted(n for n in os.listdir(folders.run_folder("kept")) if n.startswith("state-")) == \
        ["state-00000004", "state-00000005"]
