"""`edge-agent chat`: the terminal side of a conversation.

Line editing and history come from readline (the standard library's, no extra package);
Ctrl-C stops an answer and keeps the chat; Ctrl-D or /bye leaves on a fresh line. A line
that starts with triple quotes opens a block that ends at the next line ending with them,
and a line ending in a backslash goes on on the next one.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO, cast

from edge_agent.chat import ChatSession, SessionError
from edge_agent.runtime import SamplingParams

PROMPT, MORE = "you> ", "...> "
BLOCK = '"""'
HELP = """commands:
  /system TEXT   set the system prompt for the turns that follow (/system alone shows it)
  /clear         forget the conversation (the system prompt stays)
  /bye           leave (or Ctrl-D)
  /help          this list
  a line starting with \"\"\" opens a block of several lines, closed by a line ending in \"\"\";
  a line ending in \\ continues on the next; Ctrl-C stops an answer"""
HISTORY_LINES = 1000


def display_name(folder: Path, fallback: str) -> str:
    """The model's own name: its release (`model version`) or the test model's recipe,
    rather than the folder it happens to sit in."""
    resolved = folder.resolve()
    for file, fields in ((".release.json", ("model", "version")), ("test_model.json", ("name",))):
        try:
            data = json.loads((resolved / file).read_text())
            return " ".join(str(data[f]) for f in fields)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return fallback


class ChatRepl:
    def __init__(
        self,
        session: ChatSession,
        params: SamplingParams,
        *,
        history_file: Path | None = None,
        read: Callable[[str], str] = input,
        out: TextIO = sys.stdout,
        err: TextIO = sys.stderr,
    ) -> None:
        self.session = session
        self.params = params
        self.history_file = history_file
        self.read = read
        self.out = out
        self.err = err

    def run(self, name: str) -> None:
        self._load_history()
        self._say(
            f"chatting with {name}: /help for commands, Ctrl-C stops an answer, "
            "Ctrl-D or /bye leaves"
        )
        try:
            while True:
                try:
                    text = self._read_turn()
                except KeyboardInterrupt:  # at the prompt: drop the line, not the chat
                    self.out.write("\n")
                    self._say("(Ctrl-D or /bye leaves)")
                    continue
                except EOFError:
                    self.out.write("\n")  # the shell's prompt starts on its own line
                    return
                if text is None:
                    continue
                if text.startswith("/") and not self._command(text):
                    return
                if not text.startswith("/"):
                    self._answer(text)
        finally:
            self._save_history()

    def _read_turn(self) -> str | None:
        line = self.read(PROMPT)
        if line.strip().startswith(BLOCK):
            rest, lines = line.strip()[len(BLOCK) :], []
            while not rest.rstrip().endswith(BLOCK):
                lines.append(rest)
                rest = self.read(MORE)
            lines.append(rest.rstrip()[: -len(BLOCK)])
            text = "\n".join(lines).strip("\n")
        else:
            parts = [line]
            while parts[-1].endswith("\\"):
                parts[-1] = parts[-1][:-1]
                parts.append(self.read(MORE))
            text = "\n".join(parts)
        return text if text.strip() else None

    def _command(self, text: str) -> bool:
        """Run a /command; False to leave."""
        word, _, rest = text.partition(" ")
        if word == "/bye":
            return False
        if word == "/clear":
            self.session.clear()
            self._say("(conversation cleared)")
        elif word == "/system":
            if rest.strip():
                self.session.set_system(rest.strip())
                self._say("(system prompt set)")
            else:
                self._say(f"system prompt: {self.session.system or '(none)'}")
        elif word in ("/help", "/?"):
            self._say(HELP)
        else:
            self._say(f"unknown command {word}; /help lists them")
        return True

    def _answer(self, text: str) -> None:
        self.out.write("model> ")
        self.out.flush()
        try:
            self.session.reply(text, self.params, cast(TextIO, _Printable(self.out)))
            self.out.write("\n")
        except KeyboardInterrupt:
            self.out.write("\n")
            self._say("[stopped: this turn is not kept]")
        except SessionError as exc:
            self.out.write("\n")
            self._say(f"error: {exc}")
        self.out.flush()

    def _say(self, message: str) -> None:
        self.err.write(message + "\n")
        self.err.flush()

    def _load_history(self) -> None:
        if self.history_file is None:
            return
        import readline

        readline.set_history_length(HISTORY_LINES)
        with contextlib.suppress(OSError):
            readline.read_history_file(self.history_file)

    def _save_history(self) -> None:
        if self.history_file is None:
            return
        import readline

        with contextlib.suppress(OSError):
            self.history_file.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(self.history_file)


# C0 controls but tab and newline, DEL and C1 controls: a model's text must not move the
# cursor, clear the screen or send escape sequences to the terminal.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class _Printable(io.TextIOBase):
    """Writes what a model says with its control characters shown as U+FFFD."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def write(self, text: str) -> int:
        self._out.write(_CONTROL.sub("\ufffd", text))
        return len(text)

    def flush(self) -> None:
        self._out.flush()
