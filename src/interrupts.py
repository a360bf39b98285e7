"""Ctrl-C, SIGTERM and SIGHUP in every entry point: one line saying what stopped and what is
kept, exit status 128 + the signal (130 for Ctrl-C), nothing half-written, nothing of
MindSpore's left in the current folder.

``Interrupts`` (``with Interrupts():``, entered by ``src.cli.run`` and the other entry points)
turns a stop signal into ``Interrupted``, a ``KeyboardInterrupt`` carrying the signal, raised in
the main thread, so that every ``finally`` (``src.files.atomic_path``, the MindRecord staging
folder) cleans up on the way out. Two things of MindSpore's stand in the way, and are dealt with
here:

* **Graph runs take over SIGINT.** Every graph run installs MindSpore's own SIGINT handler,
  which sends SIGTERM to the process: a Ctrl-C during evaluation or a training step ended the
  process by SIGTERM (status 143) without a word. While ``Interrupts`` is active, SIGTERM is
  blocked in every thread and a watcher thread takes it (``sigwaitinfo``): a SIGTERM the
  process sent itself is MindSpore passing on a Ctrl-C and is handled as SIGINT, any other as
  SIGTERM. Children forked by this process (data workers) get SIGTERM unblocked again
  (``os.register_at_fork``); a child started with ``subprocess`` should be started inside
  ``sigterm_unblocked()``.
* **An exception inside MindSpore's own Python code** (graph compilation calls back into
  Python for every symbol it resolves) makes MindSpore print its analysis (~40 lines) and write
  ``rank_0/om/analyze_fail.ir`` into the current folder; one inside an import can leave that
  module's import lock held, so that another thread importing it waits for ever. A stop signal
  that comes while MindSpore's code or an import runs is raised as soon as it returns to the
  project's code (a trace on the calling frame, ``raise_outside_mindspore``); a second Ctrl-C
  meanwhile stops at once.
"""
import _thread
import contextlib
import os
import signal
import sys
import threading
from typing import Any, Callable, Optional

STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
# Packages whose Python code a stop must not be raised into (their files' folders).
FOREIGN_PACKAGES = ("mindspore",)
NOTICE_AFTER_S = 1.0     # a stop that waits longer than this for MindSpore says so


def signal_name(number: int) -> str:
    """'Ctrl-C (SIGINT)', 'SIGTERM', ..."""
    name = signal.Signals(number).name
    return "Ctrl-C (SIGINT)" if number == signal.SIGINT else name


class Interrupted(KeyboardInterrupt):
    """A stop signal, raised in the main thread. ``status`` is the shell's exit status for it
    (128 + the signal's number); ``reported`` is True when a line about it was printed already
    (the MindRecord conversion says what it removed)."""

    def __init__(self, number: int, reported: bool = False):
        super().__init__(signal.Signals(number).name)
        self.number = number
        self.reported = reported

    @property
    def status(self) -> int:
        return 128 + self.number

    @property
    def name(self) -> str:
        return signal_name(self.number)


def _foreign_roots() -> tuple:
    roots = []
    for package in FOREIGN_PACKAGES:
        module = sys.modules.get(package)
        location = getattr(module, "__file__", None) if module else None
        if location:
            roots.append(os.path.dirname(os.path.abspath(location)) + os.sep)
    return tuple(roots)


IMPORT_MACHINERY = "<frozen importlib"


def caller_of_foreign_code(frame) -> Optional[object]:
    """When ``frame`` runs inside MindSpore's code or inside an import (any frame of its stack
    does), the frame of the project's code that called into it, outermost such call; else
    None. A stop raised inside an import can leave the module's import lock held (a worker
    thread importing the same module then waits for ever) or MindSpore half imported (which
    crashes the interpreter's exit)."""
    roots = _foreign_roots() + (IMPORT_MACHINERY,)
    inside, caller = False, None
    while frame is not None:
        if frame.f_code.co_filename.startswith(roots):
            inside, caller = True, None
        elif inside and caller is None:
            caller = frame
        frame = frame.f_back
    return caller if inside else None


def _raise_when_resumed(caller, exception: BaseException) -> None:
    """Raise ``exception`` in ``caller`` as soon as it runs again (its next opcode)."""
    previous = sys.gettrace()

    def trace(frame, event, _arg):
        if frame is caller and event in ("opcode", "line", "return", "exception"):
            caller.f_trace = None
            sys.settrace(previous)
            raise exception
        return trace if frame is caller else None

    caller.f_trace_opcodes = True
    caller.f_trace = trace
    sys.settrace(lambda *args: None)   # tracing on for this thread; no other frame is traced


def raise_outside_mindspore(exception: BaseException, frame) -> bool:
    """Raise ``exception`` now, or, when ``frame`` is inside MindSpore's code, as soon as it
    returns to the project's code; returns True when the raise waits."""
    caller = caller_of_foreign_code(frame)
    if caller is None:
        raise exception
    _raise_when_resumed(caller, exception)
    return True


# --- SIGTERM taken by a watcher thread --------------------------------------------------------


def _sigterm_blockable() -> bool:
    return hasattr(signal, "sigwaitinfo") and hasattr(signal, "pthread_sigmask")


def _unblock_sigterm() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


_fork_hook_registered = False


@contextlib.contextmanager
def sigterm_unblocked():
    """Start child processes (``subprocess``) inside this block: they inherit this thread's
    signal mask, and a child with SIGTERM blocked could not be stopped by it."""
    if not _sigterm_blockable():
        yield
        return
    blocked = signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    if blocked:
        _unblock_sigterm()
    try:
        yield
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


class _SigtermWatcher(threading.Thread):
    """Takes SIGTERM (blocked in every thread) and passes it to the main thread as SIGINT when
    the process sent it itself (MindSpore's SIGINT handler does), else as SIGTERM."""

    def __init__(self):
        super().__init__(name="sigterm-watcher", daemon=True)
        self.stopping = False

    def run(self):
        while not self.stopping:
            try:
                info = signal.sigtimedwait({signal.SIGTERM}, 0.25)
            except InterruptedError:
                continue
            if info is None:
                continue
            own = info.si_pid == os.getpid()
            number = signal.SIGINT if own else signal.SIGTERM
            handler = signal.getsignal(number)
            if handler in (signal.SIG_IGN, None):
                continue
            if handler == signal.SIG_DFL:          # what the signal would have done: end it
                os._exit(128 + number)
            _thread.interrupt_main(number)


# --- the handlers ------------------------------------------------------------------------------

class Interrupts:
    """While active, SIGINT, SIGTERM and SIGHUP raise ``Interrupted`` in the main thread
    (outside MindSpore's code: see the module's docstring). ``stop_now(number)`` is called on a
    second Ctrl-C while the first waits for MindSpore: it should print its line and end the
    process (``os._exit``). ``take_sigterm`` False leaves SIGTERM unblocked (no watcher thread),
    for processes that run no MindSpore graph. Only in the main thread; a no-op elsewhere."""

    def __init__(self, stop_now: Optional[Callable[[int], None]] = None,
                 take_sigterm: bool = True):
        self.stop_now = stop_now or stop_at_once
        self.take_sigterm = take_sigterm
        self.previous: dict = {}
        self.pending: Optional[int] = None
        self.watcher: Any = None
        self.blocked = False
        self.notice: Any = None

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for name in STOP_SIGNALS:
            number = getattr(signal, name, None)
            if number is None or signal.getsignal(number) in (signal.SIG_IGN, None):
                continue
            self.previous[number] = signal.signal(number, self.handle)
        if self.take_sigterm and signal.SIGTERM in self.previous and _sigterm_blockable():
            _register_fork_hook()
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            self.blocked = True
            self.watcher = _SigtermWatcher()
            self.watcher.start()
        return self

    def handle(self, number, frame):
        if self.pending is not None:
            if number == signal.SIGINT or number != self.pending:
                self.stop_now(number)
            return
        exception = Interrupted(number)
        self.pending = number
        if raise_outside_mindspore(exception, frame):
            self.notice = threading.Timer(NOTICE_AFTER_S, _say_waiting, (number,))
            self.notice.daemon = True
            self.notice.start()

    def __exit__(self, *_exc):
        if self.notice is not None:
            self.notice.cancel()
        if self.watcher is not None:
            self.watcher.stopping = True
            self.watcher.join()
        if self.blocked:
            _unblock_sigterm()
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        return False


def _say_waiting(number: int) -> None:
    print(f"\n{signal_name(number)}: stopping as soon as MindSpore's graph compilation or "
          "run returns (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)


def stop_at_once(number: int) -> None:
    """End the process now (a stop signal again while the first waits for MindSpore): no
    cleanup runs, so a file being written stays under its hidden temporary name."""
    print(f"\n{signal_name(number)} again: stopped at once (a file being written is left under "
          "its hidden .tmp-* name)", file=sys.stderr, flush=True)
    os._exit(128 + number)


def _register_fork_hook() -> None:
    global _fork_hook_registered
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_unblock_sigterm)
        _fork_hook_registered = True

