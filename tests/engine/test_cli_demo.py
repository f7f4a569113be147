"""`python -m trainer` as a user runs it, in a subprocess from the repository root: the demo writes the files it
names and its LoRA loads back with every key; Ctrl-C keeps a resumable state, says how to resume, and the
resumed run ends where an uninterrupted one does; inspect reads the file; the committed sample dataset is what
samples/make_demo_dataset.py draws."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from trainer.cli.main import main

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUFFIXES = ("lora_down.weight", "lora_up.weight", "alpha")


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_demo_writes_the_files_it_names_and_its_lora_loads_back_with_every_key(tmp_path, capsys):
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers

    from trainer.cli.tiny_model import builtin_tiny_model, tiny_unet

    done = run_cli("demo", "--output", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    named = dict(re.findall(r"^  (LoRA|loss graph|summary): +(\S+)$", done.stdout, re.M))
    assert set(named) == {"LoRA", "loss graph", "summary"} and all(os.path.isfile(p) for p in named.values())
    assert "not image quality" in done.stdout and "Traceback" not in done.stderr
    assert Image.open(named["loss graph"]).size[0] > 0
    with open(named["summary"], encoding="utf-8") as handle:
        summary = handle.read()
    assert "2 bucket(s)" in summary and "final LoRA" in summary

    trainable, _ = builtin_tiny_model()
    tensors = safetensors.torch.load_file(named["LoRA"])
    assert set(tensors) == {f"{name}.{suffix}" for name in trainable.lora_targets for suffix in SUFFIXES}
    assert any(value.abs().max() > 0 for key, value in tensors.items() if key.endswith("lora_up.weight"))
    converted, alphas = _convert_non_diffusers_lora_to_diffusers(dict(tensors))
    assert len(converted) == 2 * len(trainable.lora_targets) and len(alphas) == len(trainable.lora_targets)
    unet = tiny_unet()
    unet.load_lora_adapter(converted, prefix="unet", network_alphas=alphas, adapter_name="demo")
    x, t, context = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32)
    with torch.no_grad():
        assert (unet(x, t, encoder_hidden_states=context).sample - tiny_unet()(x, t, encoder_hidden_states=context)
                .sample).abs().max() > 0

    assert main(["inspect", named["LoRA"], "--no-comfyui"]) == 0
    shown = capsys.readouterr().out
    assert "48 of 48 modules are kohya's names for SD1.x (all)" in shown and "ranks: 4 x48" in shown


LONG_RUN = """
[model]
path = "builtin-tiny"
[output]
loras_folder = "{out}/loras"
runs_folder = "{out}/runs"
[dataset]
folder = "{repo}/samples/demo_dataset"
[buckets]
resolution = 128
min_bucket_reso = 64
max_bucket_reso = 256
[network]
rank = 2
[optimizer]
optimizer_type = "AdamW"
learning_rate = 1e-3
[training]
output_name = "stop"
epochs = {epochs}
batch_size = 2
precision = "fp32"
[save]
precision = "fp32"
"""


def test_ctrl_c_keeps_a_resumable_state_and_resume_ends_where_an_uninterrupted_run_does(tmp_path):
    config = tmp_path / "stop.toml"
    config.write_text(LONG_RUN.format(out=tmp_path / "stopped", repo=REPO_ROOT, epochs=6), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "trainer", "train", str(config)], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = []
    try:
        for line in process.stderr:                      # the plain progress lines (not a terminal: no tqdm)
            err.append(line)
            if line.startswith("step "):
                process.send_signal(signal.SIGINT)
                break
        err.append(process.stderr.read())
        assert process.wait(timeout=120) == 130, "".join(err)
    finally:
        process.kill()
    text = "".join(err)
    run_folder = str(tmp_path / "stopped" / "runs" / "stop")
    assert f"python -m trainer resume {run_folder}" in text and "Traceback" not in text, text
    assert os.path.isfile(tmp_path / "stopped" / "loras" / "stop-interrupted.safetensors")
    stopped_at = int(re.search(r"Cancelled after step (\d+)", text).group(1))
    assert 0 < stopped_at < 6 * 16

    assert main(["resume", run_folder]) == 0                                # in-process: the same code path
    resumed = safetensors.torch.load_file(str(tmp_path / "stopped" / "loras" / "stop.safetensors"))
    whole_config = tmp_path / "whole.toml"
    whole_config.write_text(LONG_RUN.format(out=tmp_path / "whole", repo=REPO_ROOT, epochs=6), encoding="utf-8")
    assert main(["train", str(whole_config)]) == 0
    whole = safetensors.torch.load_file(str(tmp_path / "whole" / "loras" / "stop.safetensors"))
    assert set(whole) == set(resumed) and all(torch.equal(whole[key], resumed[key]) for key in whole)


def test_a_bad_config_in_a_subprocess_exits_2_naming_the_line(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[dataset]\nfolder = 'nowhere'\n", encoding="utf-8")
    done = run_cli("train", str(config))
    assert done.returncode == 2 and "bad.toml:2: [dataset] folder: the folder" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("name", ["circle_red", "triangle_orange"])
def test_the_sample_dataset_is_what_its_script_draws(tmp_path, name):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_demo_dataset",
                                                  os.path.join(REPO_ROOT, "samples", "make_demo_dataset.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    subset = script.SUBSET
    drawn = script.make_demo_dataset(str(tmp_path))
    for suffix in (".png", ".txt"):
        committed = os.path.join(REPO_ROOT, "samples", "demo_dataset", subset, name + suffix)
        fresh = os.path.join(drawn, subset, name + suffix)
        if suffix == ".png":
            assert np.array_equal(np.asarray(Image.open(committed)), np.asarray(Image.open(fresh)))
        else:
            assert open(committed, encoding="utf-8").read() == open(fresh, encoding="utf-8").read()


def demo_config(tmp_path, name: str, epochs: int = 2) -> str:
    """samples/demo.toml with its output under tmp_path/name, fp32 files and a shorter run."""
    with open(os.path.join(REPO_ROOT, "samples", "demo.toml"), encoding="utf-8") as handle:
        text = handle.read()
    out = (tmp_path / name).as_posix()
    text = (text.replace('"../demo-output/runs"', f'"{out}/runs"').replace('"../demo-output"', f'"{out}"')
            .replace('folder = "demo_dataset"', f'folder = "{REPO_ROOT}/samples/demo_dataset"')
            .replace("epochs = 6", f"epochs = {epochs}").replace('precision = "fp16"', 'precision = "fp32"'))
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_the_cli_under_torchrun_trains_the_single_process_lora_and_writes_one_set_of_files(tmp_path):
    """Two processes (gloo, CPU) on the same config: the same LoRA as one process within 1e-5, one set of files."""
    single = run_cli("train", demo_config(tmp_path, "single", epochs=4))
    assert single.returncode == 0, single.stderr[-3000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(port), "-m", "trainer", "train",
                             demo_config(tmp_path, "double", epochs=4)],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert double.returncode == 0, double.stderr[-3000:]
    assert double.stdout.count("final LoRA:") == 1 and "over 2 processes" in double.stdout   # rank 0 reports
    listing = {name: sorted(os.listdir(tmp_path / name)) for name in ("single", "double")}
    assert listing["single"] == listing["double"] == ["demo_lora-000003.safetensors", "demo_lora.safetensors", "runs"]
    assert sorted(os.listdir(tmp_path / "double" / "runs" / "demo_lora")) == \
        sorted(os.listdir(tmp_path / "single" / "runs" / "demo_lora"))
    one = safetensors.torch.load_file(str(tmp_path / "single" / "demo_lora.safetensors"))
    two = safetensors.torch.load_file(str(tmp_path / "double" / "demo_lora.safetensors"))
    assert one.keys() == two.keys()
    assert max(float((one[key] - two[key]).abs().max()) for key in one) < 1e-5


def test_ctrl_c_under_torchrun_cancels_every_process_at_one_step_and_resumes_exactly(tmp_path):
    """A terminal's Ctrl-C reaches torchrun and both workers (and torchrun forwards it once more): each process
    stops at the same agreed step, rank 0 keeps the state, and a one-process resume ends on the whole run."""
    config = tmp_path / "stop.toml"
    config.write_text(LONG_RUN.format(out=tmp_path / "stopped", repo=REPO_ROOT, epochs=6), encoding="utf-8")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                "--master_port", str(port), "-m", "trainer", "train", str(config)], cwd=REPO_ROOT,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    err = []
    try:
        for line in process.stderr:
            err.append(line)
            if line.startswith("step "):
                os.killpg(process.pid, signal.SIGINT)        # as a terminal does: the whole process group
                break
        err.append(process.stderr.read())
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    text = "".join(err)
    run_folder = str(tmp_path / "stopped" / "runs" / "stop")
    assert f"python -m trainer resume {run_folder}" in text and "KeyboardInterrupt" not in text, text[-3000:]
    stopped_at = int(re.search(r"Cancelled after step (\d+)", text).group(1))
    assert 0 < stopped_at < 6 * 16
    assert main(["resume", run_folder]) == 0
    resumed = safetensors.torch.load_file(str(tmp_path / "stopped" / "loras" / "stop.safetensors"))
    whole_config = tmp_path / "whole.toml"
    whole_config.write_text(LONG_RUN.format(out=tmp_path / "whole", repo=REPO_ROOT, epochs=6), encoding="utf-8")
    assert main(["train", str(whole_config)]) == 0
    whole = safetensors.torch.load_file(str(tmp_path / "whole" / "loras" / "stop.safetensors"))
    assert max(float((whole[key] - resumed[key]).abs().max()) for key in whole) < 1e-5


def test_the_command_lines_plan_only_and_will_not_fit_stops_write_nothing(tmp_path, capsys, monkeypatch):
    """`plan_only = true` prints the plan and writes no run folder; a run the plan stops (here: a warm-up pass out
    of memory) leaves no folder either, so its name stays free for the next try."""
    import dataclasses

    import trainer.preflight as preflight

    looked = tmp_path / "looked.toml"
    config = LONG_RUN.format(out=tmp_path / "looked", repo=REPO_ROOT, epochs=1)
    looked.write_text(config.replace("[save]", "plan_only = true\n[save]"), encoding="utf-8")
    assert main(["train", str(looked)]) == 0
    out = capsys.readouterr()
    assert "estimate:" in out.out + out.err and "plan only: nothing was trained or written" in out.out + out.err
    assert not os.path.exists(tmp_path / "looked" / "runs" / "stop") and not os.listdir(tmp_path / "looked" / "loras")

    measured = preflight.measure_warmup
    monkeypatch.setattr(preflight, "measure_warmup", lambda *args: dataclasses.replace(measured(*args),
                                                                                        out_of_memory=True))
    stopped = tmp_path / "stopped.toml"
    stopped.write_text(LONG_RUN.format(out=tmp_path / "stopped", repo=REPO_ROOT, epochs=1), encoding="utf-8")
    assert main(["train", str(stopped)]) != 0
    out = capsys.readouterr()
    assert "will not fit" in out.out + out.err
    assert not os.path.exists(tmp_path / "stopped" / "runs" / "stop")
