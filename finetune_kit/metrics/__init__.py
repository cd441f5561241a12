"""Metrics through `evaluate`, offline: our modules ship in this folder and load by path.

`evaluate.load("accuracy")` fetches and runs a script from the Hub, which cannot work offline and runs remote
code; the few metrics the recipes need live here instead, with the math delegated to scikit-learn / scipy. Any
other name goes to `evaluate.load` as usual (and needs the network).
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_metric(name: str, config_name: str | None = None):
    import evaluate

    local = HERE / name
    return evaluate.load(str(local) if local.is_dir() else name, config_name)
