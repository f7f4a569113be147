"""A ComfyUI server killed (SIGKILL) while it trains, twice: every file it left is whole, and a new server
resumes from the newest saved state to the weights of a run that was never interrupted."""

from __future__ import annotations

import os
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import make_kohya_folder

from . import harness
from .server import ComfyServer
from .test_workflow_server import error_message, training_graph

SAVE_EVERY = 5


def crash_graph(output_name: str, resume_from: str = "") -> dict:
    graph = training_graph(output_name, epochs=30, resume_from=resume_from)    # 2 steps per epoch: 60 steps
    graph["6"]["inputs"].update(save_every_n_steps=SAVE_EVERY, keep_last_n=3)
    for preview in ("8", "9", "10", "11", "12", "13"):
        graph.pop(preview)
    return graph


def wait_for_file(path: str, server: ComfyServer, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if time.time() > deadline:
            raise TimeoutError(f"{path} never appeared:\n{server.read_log()[-3000:]}")
        time.sleep(0.05)


def kill(server: ComfyServer) -> None:
    server.process.kill()                       # SIGKILL: no handler, no cleanup, as the OOM killer does
    server.process.wait(30)
    server.log.close()


def assert_everything_left_is_whole(base: str) -> None:
    loras = os.path.join(base, "models", "loras")
    for name in os.listdir(loras):
        assert not name.startswith(".partial"), f"a half-written file was left: {name}"
        load_file(os.path.join(loras, name))                                      # every LoRA loads
    run_folder = os.path.join(base, "output", "lora-trainer", "crash")
    for name in os.listdir(run_folder):
        path = os.path.join(run_folder, name)
        if name.startswith("state-") and os.path.isfile(os.path.join(path, "state.json")):
            load_file(os.path.join(path, "network.safetensors"))
            torch.load(os.path.join(path, "trainer_state.pt"), weights_only=True)


@pytest.mark.slow
def test_a_killed_server_resumes_from_its_newest_state_to_the_uninterrupted_weights(tmp_path):
    reason = harness.missing_reason()
    if reason:
        pytest.skip(reason)
    base = str(tmp_path / "base")
    make_kohya_folder(os.path.join(base, "input", "dogs"), {"3_sks dog": [(64, 64), (96, 64), (64, 64)]},
                      {"3_sks dog/0": "a photo of sks dog"})
    loras = os.path.join(base, "models", "loras")

    # kill during the run, just after a save, then again after the resumed run has saved once more
    server = ComfyServer(base).start()
    server.queue(crash_graph("crash"))
    wait_for_file(os.path.join(loras, f"crash-step{2 * SAVE_EVERY:08d}.safetensors"), server)
    kill(server)
    assert_everything_left_is_whole(base)

    server = ComfyServer(base)
    server.start()
    server.queue(crash_graph("crash", resume_from="crash"))
    wait_for_file(os.path.join(loras, f"crash-step{6 * SAVE_EVERY:08d}.safetensors"), server)
    time.sleep(0.3)                             # mid-step, some steps after the save
    kill(server)
    assert_everything_left_is_whole(base)

    server = ComfyServer(base)
    server.start()
    try:
        resumed = server.wait(server.queue(crash_graph("crash", resume_from="crash")))
        assert resumed["status"]["status_str"] == "success", error_message(resumed)
        whole = server.wait(server.queue(crash_graph("whole")))
        assert whole["status"]["status_str"] == "success", error_message(whole)
    finally:
        server.stop()
    final, reference = load_file(os.path.join(loras, "crash.safetensors")), load_file(os.path.join(loras,
                                                                                                 "whole.safetensors"))
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[key], reference[key]) for key in reference)
