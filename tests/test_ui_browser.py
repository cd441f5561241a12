"""The web board in a real browser: headless Chromium (Debian's `chromium`) driven by playwright, against a board
started as a user starts it (`finetune-kit ui`) on a workspace holding a tiny Llama and chat data.

One board serves the module's tests, in order: a bad value shows its error beside the field; two tabs launch at
once (one runs, one waits), a 10-step run's curve grows, Stop leaves a resumable checkpoint, Resume finishes it;
its report opens; the Data tab marks what carries loss; chat streams an answer. Screenshots go to the test's
artifact folder (printed), and into docs/ui/ with FINETUNE_KIT_UI_SCREENSHOTS=docs.

Skipped, with the reason, only outside CI when no Chromium is installed; in CI (CI set, as .ci/run sets it) a
missing browser fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, write_config, write_jsonl

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
IN_CI = os.environ.get("CI", "") not in ("", "0", "false")
if CHROMIUM is None and not IN_CI:
    pytest.skip("no Chromium here (apt-get install chromium; .ci/run installs it): the browser tests need one",
                allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra") if not IN_CI \
    else __import__("playwright.sync_api").sync_api

pytestmark = pytest.mark.timeout(240)
WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "lemon", "piano"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(ws: Path, name: str, output_dir: str, steps: int, **more) -> None:
    # Rows of ~70 tokens at batch 2: cheap steps, yet a few tenths of a second each, so a Stop sent after the first
    # step lands well before the tenth.
    write_config(ws / name, {"recipe": "sft", "model_name_or_path": "models/tiny", "dataset_name": "data/chat.jsonl",
                             "output_dir": output_dir, "use_peft": True, "lora_r": 8, "lora_alpha": 16,
                             "learning_rate": 0.03, "max_steps": steps, "per_device_train_batch_size": 2,
                             "max_length": 96, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
                             "seed": 0, **more})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_dir) -> Path:
    ws = tmp_path_factory.mktemp("board-ws")
    shutil.copytree(tiny_model_dir, ws / "models" / "tiny")  # inside: the board reads nothing outside
    (ws / "data").mkdir()
    write_jsonl(ws / "data" / "chat.jsonl", [
        {"messages": [{"role": "user", "content": f"Say {w} many times"},
                      {"role": "assistant", "content": " ".join([w] * 60)}]}
        for w in (WORDS[i % len(WORDS)] for i in range(64))])
    # Evaluated at steps 5 and 10 on a quarter of the rows: the metric chart has points to draw.
    _config(ws, "tiny_a.yaml", "runs/tiny-a", 10, eval_split_ratio=0.25, eval_strategy="steps", eval_steps=5)
    _config(ws, "tiny_b.yaml", "runs/tiny-b", 2)
    return ws


@pytest.fixture(scope="module")
def board(workspace):
    """`finetune-kit ui` on the workspace; yields its URL. Prints the time to a served page."""
    port = _free_port()
    kit = Path(sys.executable).parent / "finetune-kit"
    started = time.monotonic()
    proc = subprocess.Popen([str(kit), "ui", "--workspace", str(workspace), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    try:
        line = proc.stdout.readline()
        assert line.startswith("board: http://127.0.0.1"), line + proc.stdout.read()
        print(f"\nboard served after {time.monotonic() - started:.1f} s: {line.strip()}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail("CI is set but no Chromium is installed: .ci/run installs Debian's chromium")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("board-screenshots")
    yield folder
    print(f"\nboard screenshots: {folder}")
    if os.environ.get("FINETUNE_KIT_UI_SCREENSHOTS") == "docs":
        target = ROOT / "docs" / "ui"
        target.mkdir(parents=True, exist_ok=True)
        for png in folder.glob("*.png"):
            shutil.copy(png, target / png.name)


@pytest.fixture(scope="module")
def page(board, browser):
    """The first tab, used by every test in turn (building the form costs seconds per page)."""
    first = _page(browser, board)
    yield first
    first.close()


def _page(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(url)
    page.wait_for_selector("#field-learning_rate")
    return page


def _pick(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.locator(f"#{elem_id}").get_by_role("option", name=option, exact=True).click()


def _wait_for_value(page, field: str, value: str) -> None:
    """Until the form (rebuilt after a config is picked) shows `value` in the field."""
    page.wait_for_function("([id, v]) => { const el = document.querySelector(`#${id} textarea, #${id} input`); "
                           "return el !== null && el.value === v; }", arg=[f"field-{field}", value])


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _wait_text(locator, pattern: str, timeout: float = 90) -> str:
    """The locator's text once it matches `pattern` (regex)."""
    deadline = time.time() + timeout
    while True:
        text = locator.inner_text() if locator.count() else ""
        if re.search(pattern, text):
            return text
        assert time.time() < deadline, f"never matched {pattern!r}; last: {text!r}"
        time.sleep(0.2)


def _table(page) -> dict[str, list[str]]:
    """Runs table rows by run name: the cells as the page shows them (run, recipe, model, data, status, ...)."""
    lines = [line.strip() for line in page.locator("#runs-table").inner_text().splitlines() if line.strip()]
    return {line: lines[i:i + 7] for i, line in enumerate(lines) if line.startswith("runs/")}


def _wait_for(condition, timeout: float) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def _points(summary: str) -> int:
    found = re.search(r"(\d+) loss points", summary)
    return int(found.group(1)) if found else 0


def _wait_status(page, wanted: dict[str, str], timeout: float) -> dict[str, list[str]]:
    """The runs table once each run in `wanted` shows its status."""
    deadline = time.time() + timeout
    while True:
        table = _table(page)
        if all(run in table and table[run][4] == status for run, status in wanted.items()):
            return table
        assert time.time() < deadline, f"never {wanted}; last: {table}"
        time.sleep(0.3)


def test_a_bad_value_shows_its_error_beside_the_field(page, shots):
    _pick(page, "setup-config", "tiny_a.yaml")
    _wait_for_value(page, "output_dir", "runs/tiny-a")
    page.locator("#field-learning_rate input").fill("-0.5")
    page.locator("#field-learning_rate input").press("Tab")
    page.locator("#validate-button").click()
    beside = _wait_text(page.locator("#field-learning_rate"), "learning_rate must be positive", timeout=30)
    assert "-0.5" in beside and "error" in page.locator("#setup-status").inner_text()
    assert "learning_rate must be positive" not in page.locator("#field-max_steps").inner_text()
    page.locator("#field-learning_rate").scroll_into_view_if_needed()
    page.screenshot(path=shots / "setup-error.png")
    page.locator("#field-learning_rate input").fill("0.03")  # as the config has it, for the next test
    page.locator("#field-learning_rate input").press("Tab")


def test_two_tabs_launch_stop_resume_finish_report(page, board, browser, shots, workspace):
    a, b = page, _page(browser, board)
    _pick(a, "setup-config", "tiny_a.yaml")
    _pick(b, "setup-config", "tiny_b.yaml")
    for page, out in ((a, "runs/tiny-a"), (b, "runs/tiny-b")):
        _wait_for_value(page, "output_dir", out)
    a.locator("#launch-button").click()  # both clicks go out before either answer comes back
    b.locator("#launch-button").click()
    said = {_wait_text(p.locator("#setup-status"), "launched") for p in (a, b)}
    assert sum("running" in s for s in said) == 1 and sum("queued (#1)" in s for s in said) == 1, said
    a.screenshot(path=shots / "setup-launched.png")

    _tab(a, "Runs")
    _pick(a, "run-select", "runs/tiny-a")
    # Stop once the run has trained a step: read from the worker's progress file, not the page (it refreshes every
    # every second; a fast machine could finish 10 tiny steps in between).
    progress = workspace / ".board" / "jobs" / "runs__tiny-a" / "progress.jsonl"
    _wait_for(lambda: '"event": "step"' in (progress.read_text() if progress.is_file() else ""), 150)
    a.locator("#stop-button").click()
    _wait_text(a.locator("#run-progress"), r"stopped", timeout=90)
    checkpoints = sorted((workspace / "runs" / "tiny-a").glob("checkpoint-*"))
    assert len(checkpoints) == 1 and 0 < int(checkpoints[0].name[11:]) < 10  # saved where it stopped
    assert not (workspace / "runs" / "tiny-a" / "run_info.json").exists()  # stopped, not finished
    stopped_at = int(checkpoints[0].name[11:])
    assert _points(_wait_text(a.locator("#curve-summary"), rf"\b{stopped_at} loss points")) == stopped_at
    a.screenshot(path=shots / "runs-stopped.png")

    a.locator("#resume-button").click()
    seen = {stopped_at}  # the curve as the page showed it, growing while the resumed run trains
    deadline = time.time() + 180
    while _points(a.locator("#curve-summary").inner_text()) < 10:
        seen.add(_points(a.locator("#curve-summary").inner_text()))
        if len(seen) == 2:
            a.screenshot(path=shots / "runs-live.png")
        assert time.time() < deadline, f"the resumed run did not reach step 10 on the page; seen {sorted(seen)}"
        time.sleep(0.1)
    table = _wait_status(a, {"runs/tiny-a": "finished", "runs/tiny-b": "finished"}, timeout=120)
    assert table["runs/tiny-a"][5].startswith("train_loss") and table["runs/tiny-a"][2] == "models/tiny"
    log = (workspace / ".board" / "jobs" / "runs__tiny-a" / "train.log").read_text()
    assert "Resuming from" in log and f"checkpoint-{stopped_at}" in log
    steps = [e["step"] for e in map(json.loads, progress.read_text().splitlines()) if e["event"] == "step"]
    assert steps == list(range(1, 11))  # every step once: the resume continued exactly where it stopped
    summary = a.locator("#curve-summary").inner_text()
    evals = re.search(r"eval_mean_token_accuracy (\d+) points", summary)  # steps 5, 10, and the recipe's final one
    assert "at step 10" in summary and evals and int(evals.group(1)) >= 2, summary
    a.wait_for_selector("#metric-plot img")  # the evaluation metrics drawn
    a.screenshot(path=shots / "runs-finished.png")

    a.locator("#report-button").click()
    frame = a.frame_locator("#report-view iframe")
    assert "Run report: tiny-a" in frame.locator("h1").inner_text()
    a.locator("#report-view").scroll_into_view_if_needed()
    a.screenshot(path=shots / "runs-report.png")

    a.locator("#export-button").click()  # the LoRA run merged into a standalone model, inside the workspace
    _wait_text(a.locator("#run-action-status"), r"exported to .*exports/tiny-a", timeout=120)
    assert (workspace / "exports" / "tiny-a" / "model.safetensors").is_file()

    _pick(a, "compare-runs", "runs/tiny-a")
    _pick(a, "compare-runs", "runs/tiny-b")
    a.locator("#compare-plot").scroll_into_view_if_needed()
    _wait_text(a.locator("#compare-summary"), r"runs/tiny-a: loss \(10 points\), runs/tiny-b: loss \(2 points\)")
    a.wait_for_selector("#compare-plot img")
    a.keyboard.press("Escape")  # close the run list; let the chart draw the new data before the screenshot
    a.wait_for_timeout(1500)
    a.screenshot(path=shots / "runs-compare.png")
    b.close()


def test_data_preview_marks_the_trained_part(page, shots):
    _tab(page, "Data")
    _pick(page, "data-file", "data/chat.jsonl")
    page.locator("#data-model textarea, #data-model input").first.fill("models/tiny")
    page.locator("#preview-button").click()
    _wait_text(page.locator("#data-status"), "64 rows, every row valid")
    marked = page.locator("#data-marked")
    assert "trained (loss)" in marked.inner_text().lower() and "Say apple many times" in marked.inner_text()
    page.screenshot(path=shots / "data-preview.png")


def test_chat_streams_an_answer(page, shots):
    _tab(page, "Chat")
    page.locator("#chat-refresh").click()
    time.sleep(1)
    _pick(page, "chat-model", "runs/tiny-a")
    page.locator("#chat-max-new-tokens input").fill("64")  # a tiny random model talks nonsense: enough to stream
    # Every change the page makes to the answer, recorded in the page itself (polling from here could miss them).
    page.evaluate("""() => { window.answerLengths = []; const root = document.querySelector('#chat-answers');
        new MutationObserver(() => { const bots = root.querySelectorAll('.message.bot, [data-testid="bot"]');
            if (bots.length) window.answerLengths.push(bots[bots.length - 1].innerText.trim().length); })
        .observe(root, {subtree: true, childList: true, characterData: true}); }""")
    page.locator("#chat-input textarea").fill("Say apple many times")
    page.locator("#chat-input textarea").press("Enter")
    bot = page.locator("#chat-answers .message.bot, #chat-answers [data-testid='bot']")
    _wait_for(lambda: bot.count() and bot.last.inner_text().strip() not in ("", "Loading content"), 120)
    last, steady = "", time.time()
    while time.time() - steady < 3:  # the answer is whole once it stops changing
        text = bot.last.inner_text().strip()
        last, steady = (text, time.time()) if text != last else (last, steady)
        time.sleep(0.1)
    answer = bot.last.inner_text().strip()
    assert answer and not answer.startswith("error"), answer
    lengths = [n for n in page.evaluate("window.answerLengths") if n]
    # Streamed: the page showed the answer growing in several steps before it was whole.
    assert len(set(lengths)) >= 3 and max(lengths) == lengths[-1], lengths
    page.screenshot(path=shots / "chat.png")
