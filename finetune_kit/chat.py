"""`finetune-kit chat`: talk to a model in the terminal, the answer printed token by token.

Ctrl-C while an answer streams stops that answer (the partial answer stays in the history) and the chat goes on;
Ctrl-D or /exit ends the session; /reset clears the history.
"""

from __future__ import annotations

import signal
import sys
import threading

from finetune_kit.errors import UserError
from finetune_kit.generation import GenerationOptions, stream_reply

HELP = "Type a message. /reset clears the history, /exit or Ctrl-D quits, Ctrl-C stops the current answer."


def chat_loop(model, tokenizer, options: GenerationOptions, system: str | None = None, out=sys.stdout) -> None:
    base = [{"role": "system", "content": system}] if system else []
    history = list(base)
    print(HELP, file=out, flush=True)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print(file=out)
            return
        except KeyboardInterrupt:  # at the prompt Ctrl-C only clears the line, like a shell
            print(file=out, flush=True)
            continue
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return
        if text == "/reset":
            history = list(base)
            print("(history cleared)", file=out, flush=True)
            continue
        history.append({"role": "user", "content": text})
        pieces: list[str] = []
        stop = threading.Event()
        # Ctrl-C while streaming sets `stop` (generation ends at the next token, the streamer finishes cleanly)
        # instead of raising KeyboardInterrupt wherever the main thread is: inside the streamer's queue that could
        # leave its lock held and hang the session (seen once in the suite).
        previous = _on_interrupt(lambda *_: stop.set())
        try:
            for piece in stream_reply(model, tokenizer, history, options, stop):
                pieces.append(piece)
                print(piece, end="", file=out, flush=True)
            print(" [stopped]" if stop.is_set() else "", file=out, flush=True)
        except KeyboardInterrupt:
            stop.set()
            print(" [stopped]", file=out, flush=True)
        except UserError as err:
            history.pop()
            print(f"error: {err}", file=out, flush=True)
            continue
        finally:
            _on_interrupt(previous)
        history.append({"role": "assistant", "content": "".join(pieces)})


def _on_interrupt(handler):
    """Install `handler` for SIGINT and return the one it replaces; outside the main thread (where Python allows no
    signal handlers) nothing changes and None is returned."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, handler)
