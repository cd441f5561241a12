"""The web board (`finetune-kit ui`, the `ui` extra): set up, launch, watch, compare and chat with runs.

    app.py        the command: host / token rules, the Blocks and its tabs
    paths.py      every path stays inside the workspace
    form.py       the Set up form from a recipe's typed config; validation by the preflight `train` runs
    jobs.py       the run queue (separate processes, one training at a time), Stop / Resume
    worker.py     the process a run is: `finetune-kit train` plus a progress-writing callback
    run_view.py   run folders as table rows, curves, progress / ETA, log tail
    *_tab.py      one module per tab

Only app.py and the tabs import gradio: the rest is tested without it.
"""
