"""Data-parallel training (trainer/distributed.py): two processes under torchrun (gloo, CPU) train the LoRA that
one process trains with the same global batch, write one set of files, and resume exactly.

One torchrun launch of tests/engine/distributed_worker.py runs every two-process scenario; the same worker's
code, called in this process with torch.distributed switched off, is the single-process reference.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import safetensors.torch
import torch

from tests.engine import distributed_worker as worker
from trainer.distributed import DistributedContext, check_splittable, context_from_environment
from trainer.errors import ConfigError
from trainer.networks import NetworkConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCH_TIMEOUT_S = 240
NAME = worker.SETTINGS.output_name


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_two_processes(out: str) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), os.path.join("tests", "engine", "distributed_worker.py"), out]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"


def fail(*args, **kwargs):
    raise AssertionError("the single-process path called torch.distributed")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(two-process output folder, single-process output folder), each as distributed_worker.main leaves it."""
    parallel = str(tmp_path_factory.mktemp("two_processes"))
    launch_two_processes(parallel)
    single = str(tmp_path_factory.mktemp("one_process"))
    with pytest.MonkeyPatch.context() as patch:
        for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
            patch.delenv(name, raising=False)
        for name in ("init_process_group", "all_reduce", "barrier", "broadcast_object_list"):
            patch.setattr(torch.distributed, name, fail)
        worker.main(single)
    return parallel, single


def final_lora(out: str, run: str) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(os.path.join(out, run, "loras", NAME + ".safetensors"))


def result(out: str, run: str) -> dict:
    with open(os.path.join(out, run, "result.json"), encoding="utf-8") as handle:
        return json.load(handle)


def files_of(out: str, run: str) -> dict[str, list[str]]:
    root = os.path.join(out, run)
    return {folder: sorted(os.listdir(os.path.join(root, folder)))
            for folder in ("loras", "runs", f"runs/{NAME}", f"runs/{NAME}/samples")}


def test_two_processes_train_the_lora_of_one_process_with_the_same_global_batch(runs):
    # batch 3 over 2 processes: shares of 2 + 1, 1 + 1 (a batch of 2) and 1 + 0 (a batch of 1); flipped
    # samples, shuffled and dropped tags, validation and previews on the way
    parallel, single = runs
    ours, reference = final_lora(parallel, "whole"), final_lora(single, "whole")
    assert ours.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(ours[key], reference[key], rtol=0, atol=1e-5, msg=key)
    assert any(t.abs().max() > 1e-3 for k, t in ours.items() if k.endswith("lora_up.weight")), "nothing trained"
    ours_log, reference_log = result(parallel, "whole"), result(single, "whole")
    assert len(reference_log["losses"]) == 9
    assert ours_log["losses"] == pytest.approx(reference_log["losses"], abs=1e-5)
    assert [step for step, _ in ours_log["validation_losses"]] == [3, 6, 9]
    assert [value for _, value in ours_log["validation_losses"]] == \
        pytest.approx([value for _, value in reference_log["validation_losses"]], abs=1e-5)


def test_only_rank_zero_writes_and_there_is_one_set_of_files(runs):
    parallel, single = runs
    files = files_of(parallel, "whole")
    assert files == files_of(single, "whole")
    assert files["loras"] == [f"{NAME}-step00000004.safetensors", f"{NAME}-step00000008.safetensors",
                              f"{NAME}.safetensors"]
    assert files["runs"] == [NAME]                            # one run name for all: no parallel_2
    assert files[f"runs/{NAME}"] == ["run.json", "samples", "state-00000004", "state-00000008"]
    assert files[f"runs/{NAME}/samples"] == ["step3-rank0.txt", "step6-rank0.txt", "step9-rank0.txt"]
    with open(os.path.join(parallel, "whole", "runs", NAME, "run.json"), encoding="utf-8") as handle:
        log = json.load(handle)
    assert log["status"] == "finished" and log["losses"] == result(parallel, "whole")["losses"]
    assert "batch 3 over 2 processes" in log["plan"]


def test_a_cancelled_two_process_run_resumes_exactly(runs):
    parallel, single = runs
    whole, resumed = final_lora(parallel, "whole"), final_lora(parallel, "resumed")
    assert all(torch.equal(resumed[key], whole[key]) for key in whole)
    assert result(parallel, "resumed")["losses"] == result(parallel, "whole")["losses"]
    files = files_of(parallel, "resumed")
    assert files == files_of(single, "resumed")
    assert files["loras"] == [f"{NAME}-interrupted.safetensors", f"{NAME}-step00000004.safetensors",
                              f"{NAME}-step00000008.safetensors", f"{NAME}.safetensors"]
    assert files[f"runs/{NAME}"] == ["run.json", "samples", "state-00000004", "state-00000008"]


def test_an_error_on_rank_zero_reaches_every_process(runs):
    parallel, _ = runs
    for rank in (0, 1):
        with open(os.path.join(parallel, f"refused-rank{rank}.txt"), encoding="utf-8") as handle:
            assert handle.read().startswith("ConfigError: Run 'no_such_run' has no saved state")


def test_a_batch_splits_into_contiguous_shares_as_even_as_they_can_be():
    for world_size in (2, 3, 4):
        for batch_size in range(1, 10):
            shares = [DistributedContext(rank, world_size, torch.device("cpu")).share(batch_size)
                      for rank in range(world_size)]
            assert [i for share in shares for i in range(batch_size)[share]] == list(range(batch_size))
            sizes = [share.stop - share.start for share in shares]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert DistributedContext(1, 2, torch.device("cpu")).share(1) == slice(1, 1)      # nothing of a batch of 1


def test_what_a_split_batch_cannot_train_alike_is_refused():
    context = DistributedContext(0, 2, torch.device("cpu"))
    check_splittable(NetworkConfig(rank=2), torch.device("cpu"), context)
    for network in (NetworkConfig(network_dropout=0.1), NetworkConfig(rank_dropout=0.1),
                    NetworkConfig(module_dropout=0.1), NetworkConfig(algorithm="DyLoRA", rank=4)):
        with pytest.raises(ConfigError, match="cannot train over 2 processes yet"):
            check_splittable(network, torch.device("cpu"), context)
    with pytest.raises(ConfigError, match="trains on cuda:1, but the model is on cpu"):
        check_splittable(NetworkConfig(), torch.device("cpu"), DistributedContext(1, 2, torch.device("cuda", 1)))


def test_without_torchrun_there_is_no_context():
    assert context_from_environment({}) is None
    assert context_from_environment({"WORLD_SIZE": "1", "RANK": "0"}) is None
    with pytest.raises(ConfigError, match="MASTER_ADDR, MASTER_PORT are not set: start a multi-process run with"):
        context_from_environment({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
