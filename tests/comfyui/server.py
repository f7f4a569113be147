"""A real ComfyUI server in a subprocess, with this pack and the test-only tiny-model pack installed
into a temporary base directory (nothing is written into the ComfyUI checkout)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

from . import harness

PACK_FOLDER_NAME = "comfyui-lora-trainer"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyServer:
    def __init__(self, base_dir: str):
        self.base_dir = base_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(base_dir, "server.log")
        self.process: subprocess.Popen | None = None
        self.client_id = uuid.uuid4().hex

    def install_packs(self) -> None:
        custom_nodes = os.path.join(self.base_dir, "custom_nodes")
        os.makedirs(custom_nodes, exist_ok=True)
        for source, name in ((harness.REPO_ROOT, PACK_FOLDER_NAME),
                             (harness.TINY_PACK_DIR, "lora_trainer_test_tiny_models")):
            if not os.path.lexists(os.path.join(custom_nodes, name)):     # a restarted server reuses its base
                os.symlink(source, os.path.join(custom_nodes, name))
        for folder in ("input", "output", "user", os.path.join("models", "loras")):
            os.makedirs(os.path.join(self.base_dir, folder), exist_ok=True)

    def start(self, timeout: float = 180.0) -> "ComfyServer":
        self.install_packs()
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--base-directory", self.base_dir, "--disable-auto-launch", "--dont-print-server"]
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=harness.comfyui_path(), env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.read_log()[-4000:]}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer within {timeout} s:\n{self.read_log()[-4000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if getattr(self, "log", None):
            self.log.close()

    def read_log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict | None = None):
        data = json.dumps(body or {}).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"POST {path} -> {exc.code}: {exc.read().decode()}") from None
        return json.loads(text) if text else None

    def queue(self, prompt: dict, extra_data: dict | None = None) -> str:
        body = {"prompt": prompt, "client_id": self.client_id, **({"extra_data": extra_data} if extra_data else {})}
        return self.post("/prompt", body)["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300.0) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.read_log()[-4000:]}")
