"""`finetune-kit ui`: the web board (Gradio), on this machine by default.

    finetune-kit ui [--host 127.0.0.1] [--port 7860] [--workspace DIR]

Tabs: Set up (a form generated from the recipe's config, validated by the checks `train` runs, Launch), Runs (queue,
live curves, Stop / Resume, report, export, compare), Data (rows as the recipe sees them, `check`), Chat.

Safe by default: it binds 127.0.0.1. Any other address is reachable from other machines, so it needs an access
token (FINETUNE_KIT_UI_TOKEN, never a command-line argument, which other users of the machine can read): the board
then asks for it at a login page. Every path it reads or writes stays inside the workspace (finetune_kit.ui.paths).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import threading
import time
from pathlib import Path

from finetune_kit.errors import UserError

TOKEN_ENV = "FINETUNE_KIT_UI_TOKEN"
EXTRA = 'pip install "finetune-kit[ui]"'
CSS = ".field-error textarea, .field-error input { border-color: #d32f2f !important; } " \
      ".field-error [data-testid='block-info'], .field-error .info { color: #d32f2f !important; }"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_token(host: str) -> str | None:
    """The token the board asks for: required (from the environment) when `host` is reachable from elsewhere."""
    token = os.environ.get(TOKEN_ENV, "").strip() or None
    if token is None and not is_loopback(host):
        raise UserError(f"ui: --host {host} makes the board reachable from other machines; set {TOKEN_ENV} to an "
                        "access token (e.g. `export FINETUNE_KIT_UI_TOKEN=$(python -c 'import secrets; "
                        "print(secrets.token_urlsafe(24))')`) and it will ask for it.")
    if token is not None and len(token) < 12:
        raise UserError(f"ui: {TOKEN_ENV} is {len(token)} characters; use at least 12 (a random one).")
    return token


def require_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from the user's machine
    try:
        import gradio
    except ImportError:
        raise UserError(f"finetune-kit ui needs the `ui` extra (gradio is not installed): {EXTRA}") from None
    return gradio


def build_board(workspace: Path, queue):
    """The board's Blocks for a workspace and its run queue."""
    gr = require_gradio()
    from finetune_kit.ui import chat_tab, data_tab, runs_tab, setup_tab

    with gr.Blocks(title="finetune-kit board") as board:
        gr.Markdown(f"## finetune-kit board · workspace `{workspace}`")
        with gr.Tabs():
            with gr.Tab("Set up", id="setup"):
                setup = setup_tab.build(workspace, queue)
            with gr.Tab("Runs", id="runs"):
                runs = runs_tab.build(workspace, queue)
            with gr.Tab("Data", id="data"):
                data_tab.build(workspace)
            with gr.Tab("Chat", id="chat"):
                chat_tab.build(workspace, queue)
        board.load(setup["fresh_choices"], setup["recipe"], setup["config"])
        board.load(runs["newest_run"], None, runs["run"])
    return board.queue(default_concurrency_limit=4)


def serve_board(host: str = "127.0.0.1", port: int = 7860, workspace: str = ".", block: bool = True):
    """Start the board; returns the Blocks (and blocks until Ctrl-C when `block`)."""
    started = time.monotonic()
    if not 0 < port < 65536:
        raise UserError(f"ui: --port must be in 1-65535, got {port}.")
    token = access_token(host)
    require_gradio()
    root = Path(workspace).expanduser()
    if root.exists() and not root.is_dir():
        raise UserError(f"ui: --workspace {root} is a file; give a folder.")
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    # Relative paths in a config (output_dir: runs/x) mean the workspace, in the board's own checks as in its runs.
    os.chdir(root)
    from finetune_kit.ui.jobs import JobQueue

    queue = JobQueue(root)
    board = build_board(root, queue)
    auth = (lambda _user, password: secrets.compare_digest(password.encode(), token.encode())) if token else None
    try:
        board.launch(server_name=host, server_port=port, share=False, auth=auth, prevent_thread_lock=True,
                     quiet=True, inbrowser=False, footer_links=[], css=CSS,
                     auth_message=f"Access token ({TOKEN_ENV} of the board's shell); any user name." if token
                     else None)
    except OSError as err:
        raise UserError(f"ui: cannot listen on {host}:{port} ({err}); choose another --port.") from None
    # The first form needs the config types (transformers / trl: seconds to import): load them now, not on the
    # first click.
    from finetune_kit.ui.form import form_fields

    threading.Thread(target=form_fields, args=("sft",), daemon=True, name="board-warm-up").start()
    print(f"board: http://{host}:{port} (workspace {root}; ready in {time.monotonic() - started:.1f} s; Ctrl-C "
          "stops the board, runs it started go on)", flush=True)
    if block:
        try:
            board.block_thread()
        finally:
            queue.close()
    return board
