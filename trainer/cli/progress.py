"""The terminal's progress: a bar with step, loss, its average, lr and speed (tqdm when installed, else a
plain line every few steps), and Ctrl-C as ComfyUI's Cancel: the first press stops after the current step
(the run layer keeps the LoRA so far and a state to resume from), a second stops at once."""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import contextmanager
from typing import Callable, TextIO

PLAIN_LINES = 20                 # without tqdm: about this many progress lines per run
PLAIN_SECONDS = 10.0             # ... and at least one every this many seconds
TORCHRUN_REPEAT_SECONDS = 5.0    # a second SIGINT this soon after the first, under torchrun, is its forwarding


class RunCancelled(Exception):
    """Ctrl-C asked the run to stop (raised at the start of the next step, as ComfyUI's Cancel is)."""


def tqdm_class():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class TerminalProgress:
    """The run layer's ProgressSink for a terminal. `on_start(event)` runs once, with the run's start event."""

    def __init__(self, total: int, stream: TextIO | None = None, on_start: Callable[[dict], None] | None = None,
                 use_tqdm: bool | None = None):
        stream = stream or sys.stderr               # looked up now: a test may have replaced it
        self.total, self.stream, self.on_start = total, stream, on_start
        self.bar = None
        self.last_line = (0, time.monotonic())
        bar_class = tqdm_class() if use_tqdm is not False else None
        if bar_class is not None and (use_tqdm or stream.isatty()):
            self.bar = bar_class(total=total, file=stream, unit="step", dynamic_ncols=True, leave=True)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def update(self, value: int, text: str | None = None, event: dict | None = None) -> None:
        if event and event.get("started"):
            if self.on_start:
                self.on_start(event)
            if self.bar is not None and value:
                self.bar.update(value - self.bar.n)
            self.write(text or "")
            return
        if event and "plan" in event:       # the run's plan, before its first step
            self.write(event["plan"])
        elif event and "loss" in event:
            self._step(value, event)
        elif event and "validation_loss" in event:
            self.write(f"step {event['step']}: validation loss {event['validation_loss']:.4f}")
        elif text and not event:
            self.write(text)

    def _step(self, value: int, event: dict) -> None:
        summary = (f"loss {event['loss']:.4f} avg {event['average_loss']:.4f} lr {event['lr']:.3g} "
                   f"epoch {event['epoch']}/{event['epochs']}")
        if self.bar is not None:
            self.bar.set_postfix_str(summary, refresh=False)
            self.bar.update(value - self.bar.n)
            return
        every = max(1, self.total // PLAIN_LINES)
        now = time.monotonic()
        if value % every == 0 or value == self.total or now - self.last_line[1] > PLAIN_SECONDS:
            self.last_line = (value, now)
            left = event.get("seconds_left", 0.0)
            self.write(f"step {value}/{self.total}  {summary}  {event['steps_per_second']:.2f} step/s  "
                       f"{left / 60:.1f} min left")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class CtrlC:
    """Ctrl-C as Cancel while a run trains: `check_cancel` raises RunCancelled at the next step after the first
    press; a second press raises KeyboardInterrupt at once (the run layer still keeps the last finished step)."""

    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.pressed = False
        self.pressed_at = 0.0
        # under torchrun a Ctrl-C reaches each process twice: from the terminal, then forwarded by torchrun's
        # agent a moment later; that second one is not a second press
        self.repeat_window = TORCHRUN_REPEAT_SECONDS if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0.0

    def check_cancel(self) -> None:
        if self.pressed:
            raise RunCancelled()

    @staticmethod
    def is_cancel(exc: BaseException) -> bool:
        from ..session import OtherProcessStopped      # under torchrun: the Ctrl-C another process saw first

        return isinstance(exc, (RunCancelled, KeyboardInterrupt, OtherProcessStopped))

    def _handler(self, signum, frame) -> None:
        if self.pressed:
            if time.monotonic() - self.pressed_at < self.repeat_window:
                return
            raise KeyboardInterrupt()
        self.pressed, self.pressed_at = True, time.monotonic()
        self.say("Ctrl-C: stopping after this step and keeping what was trained (press again to stop at once).")

    @contextmanager
    def installed(self):
        try:
            previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:                   # not the main thread (a test calling in): no handler to install
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)
