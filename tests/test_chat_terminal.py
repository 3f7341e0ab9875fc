"""`edge-agent chat` in a real terminal: tmux runs it, the test types keys and reads the
screen, as a person would."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.needs import need
from tests.test_cli import agent

BIN = Path(sys.executable).parent / "edge-agent"


@pytest.fixture(autouse=True)
def _tmux() -> None:
    need(shutil.which("tmux") is not None, "needs tmux: apt-get install tmux (scripts/setup does)")


class Terminal:
    def __init__(self, command: str) -> None:
        self.socket = f"edge-chat-{uuid.uuid4().hex[:8]}"  # a private tmux server
        self._tmux("new-session", "-d", "-s", "t", "-x", "160", "-y", "50", command)

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True
        )
        return done.stdout

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def type(self, text: str) -> None:
        self._tmux("send-keys", "-t", "t", "-l", text)

    def screen(self) -> str:
        # The whole scrollback (-S -): long answers scroll earlier prompts off the pane.
        # -J joins wrapped lines (and keeps trailing spaces, dropped here).
        lines = self._tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "t").splitlines()
        return "\n".join(line.rstrip() for line in lines)

    def lines(self) -> list[str]:
        return [line for line in self.screen().splitlines() if line.strip()]

    def wait(self, test: Callable[[str], bool], what: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if test(screen):
                return screen
            time.sleep(0.02)
        screen = self.screen()
        tail = "\n".join(line[:100] for line in screen.splitlines()[-12:])
        raise AssertionError(
            f"the screen never showed {what} ({prompts(screen)} prompts); it ends:\n{tail}"
        )

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def prompts(screen: str) -> int:
    return len(re.findall(r"^you>( |$)", screen, re.MULTILINE))


def idle(count: int) -> Callable[[str], bool]:
    """The screen shows `count` prompts and the last line is an empty prompt."""

    def check(screen: str) -> bool:
        lines = [line for line in screen.splitlines() if line.strip()]
        return prompts(screen) >= count and bool(lines) and lines[-1] == "you>"

    return check


def after_prompt(screen: str, number: int) -> str:
    """The screen after the `number`-th prompt's line (1 is the first)."""
    lines = screen.splitlines()
    found = [n for n, line in enumerate(lines) if re.match(r"you>( |$)", line)]
    return "\n".join(lines[found[number - 1] + 1 :]) if len(found) >= number else ""


def answer_began(number: int) -> Callable[[str], bool]:
    """The question typed at the `number`-th prompt has an answer on the screen."""

    def check(screen: str) -> bool:
        return "model>" in after_prompt(screen, number) or prompts(screen) > number

    return check


@pytest.fixture
def chat(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Terminal]:
    command = (
        f"env EDGE_AGENT__STORE__DIR={tmp_path} {BIN} chat {tiny_model_dir} --max-tokens 1500; "
        "echo SHELL-PROMPT; sleep 120"
    )
    terminal = Terminal(command)
    yield terminal
    terminal.close()


def test_chat_in_a_terminal(chat: Terminal) -> None:
    first = chat.wait(idle(1), "the first prompt")
    assert "chatting with tiny:" in first  # the model's own name, not its cache folder
    assert "INFO" not in first  # a clean screen

    # Line editing: the cursor moves, no escape codes are printed.
    chat.type("abc")
    chat.keys("Left", "Left")
    chat.type("X")
    chat.wait(lambda s: "you> aXbc" in s, "the edited line")
    chat.keys("Enter")
    screen = chat.wait(idle(2), "the answer and a new prompt")
    assert "^[[" not in screen
    assert re.search(r"^model>", screen, re.MULTILINE), screen  # an empty answer ends in ">"

    # History: the arrow key brings the line back.
    chat.keys("Up")
    chat.wait(lambda s: s.rstrip().splitlines()[-1] == "you> aXbc", "the recalled line")
    chat.keys("C-u")

    # Ctrl-C stops an answer and the chat goes on (tried again if an answer ends first).
    for attempt in range(5):
        before = prompts(chat.screen())
        chat.type("/clear")  # room in the context for a long answer
        chat.keys("Enter")
        before = prompts(chat.wait(idle(before + 1), "the conversation cleared"))
        chat.type(f"tell me more {attempt}")
        chat.keys("Enter")
        chat.wait(answer_began(before), "an answer beginning")
        chat.keys("C-c")
        screen = chat.wait(idle(before + 1), "a prompt after Ctrl-C")
        if "[stopped" in after_prompt(screen, before):
            break
        time.sleep(0.5)  # a Ctrl-C that found the prompt: let its own lines arrive
    else:
        raise AssertionError("Ctrl-C never caught an answer in flight")

    # Ctrl-C at the prompt only says how to leave.
    before = prompts(chat.screen())
    chat.type("never sent")
    chat.keys("C-c")
    screen = chat.wait(idle(before + 1), "a prompt after Ctrl-C at the prompt")
    assert "(Ctrl-D or /bye leaves)" in screen

    # Ctrl-D leaves, and the shell's next output starts on a line of its own.
    chat.keys("C-d")
    screen = chat.wait(lambda s: "SHELL-PROMPT" in s, "the chat ending")
    assert "SHELL-PROMPT" in [line.strip() for line in screen.splitlines()]
    assert "Traceback" not in screen


def test_chat_commands_and_blocks(tiny_model_dir: Path, tmp_path: Path) -> None:
    turns = (
        "hello\n"
        '"""\nfirst line\nsecond line"""\n'
        "/system answer briefly\n/system\n/clear\n/nope\n"
        "one \\\ntwo\n"
        "/bye\n"
        "never reached\n"
    )
    env = {"EDGE_AGENT__STORE__DIR": str(tmp_path)}
    result = agent("chat", str(tiny_model_dir), "--max-tokens", "3", input=turns, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("model> ") == 3  # a block and a continued line are one turn each
    assert result.stdout.count("...> ") == 3
    assert "(system prompt set)" in result.stderr
    assert "system prompt: answer briefly" in result.stderr
    assert "(conversation cleared)" in result.stderr
    assert "unknown command /nope" in result.stderr
    assert "\x1b" not in result.stdout and "\r" not in result.stdout  # no terminal control
