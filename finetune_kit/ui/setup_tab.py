"""The Set up tab: recipe and config -> a form generated from the recipe's typed config -> Validate / Launch.

The form is rebuilt (`gr.render`) whenever the recipe or the config changes; each key is one component whose kind
follows the key's type (checkbox, dropdown of its choices, number, text; lists and mappings as YAML text) with the
dataclass help as its info line. A Validate error is written into the info line of the field it names, so it shows
beside the field, and the whole message above the buttons.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import gradio as gr

from finetune_kit import recipes
from finetune_kit.errors import UserError
from finetune_kit.ui import form
from finetune_kit.ui.jobs import job_id
from finetune_kit.ui.paths import CONFIG_SUFFIXES, inside_workspace, workspace_files
from finetune_kit.yaml_config import read_yaml_config

SHIPPED = "shipped: "
NO_CONFIG = "(recipe defaults)"
ERROR_CLASS = "field-error"


def config_choices(workspace: Path, recipe: str) -> list[str]:
    """The recipe's shipped configs, then the workspace's YAML files that name this recipe (or none)."""
    shipped = [SHIPPED + name for name in recipes.configs_by_recipe().get(recipe, [])]
    own = []
    for name in workspace_files(workspace, CONFIG_SUFFIXES):
        try:
            named = recipes.recipe_named_by(inside_workspace(workspace, name))
        except UserError:
            continue
        if named in (recipe, None):
            own.append(name)
    return [NO_CONFIG, *shipped, *own]


def base_config(workspace: Path, choice: str | None) -> dict:
    """The YAML mapping a config choice holds (a shipped config by name, a workspace file by path)."""
    if not choice or choice == NO_CONFIG:
        return {}
    if choice.startswith(SHIPPED):
        return read_yaml_config(choice[len(SHIPPED):])
    return read_yaml_config(inside_workspace(workspace, choice))


def full_check(workspace: Path, recipe: str, config: Path) -> str:
    """`finetune-kit check` on the written YAML, in its own process (it loads the tokenizer and the model's
    config): the row errors, truncation and memory estimate, as the command line prints them."""
    done = subprocess.run([sys.executable, "-m", "finetune_kit.cli", "check", "--config", str(config), "--recipe",
                           recipe], cwd=workspace, capture_output=True, text=True, timeout=600)
    return (done.stdout + done.stderr).strip()


def _widget(field: form.FormField, value):
    shown = form.widget_value(field, value)
    common = {"label": field.name, "info": field.help or None, "elem_id": f"field-{field.name}",
              "key": f"field-{field.name}", "interactive": True}
    if field.kind == "bool" and not field.three_way:
        return gr.Checkbox(value=bool(shown), **common)
    if field.three_way:
        return gr.Dropdown([form.DEFAULT, "true", "false"], value=shown, **common)
    if field.kind == "choice":
        return gr.Dropdown(([form.DEFAULT] if field.nullable else []) + list(field.choices), value=shown, **common)
    if field.kind in ("int", "float"):
        return gr.Number(value=shown, precision=0 if field.kind == "int" else None, **common)
    return gr.Textbox(value=shown, lines=1, max_lines=4, **common)


def build(workspace: Path, queue) -> dict:
    """The tab's components; returns those other tabs read (recipe, model, data)."""
    names = recipes.names()
    with gr.Row():
        recipe = gr.Dropdown(names, value="sft", label="recipe", elem_id="setup-recipe", scale=1)
        config = gr.Dropdown(config_choices(workspace, "sft"), value=NO_CONFIG, label="config",
                             elem_id="setup-config", allow_custom_value=False, scale=2)
    recipe.change(lambda r: gr.update(choices=config_choices(workspace, r), value=NO_CONFIG), recipe, config)
    # Made here, placed below the form (the form's events need them when it is rendered).
    status = gr.Markdown(elem_id="setup-status", render=False)
    validate_btn = gr.Button("Validate", elem_id="validate-button", render=False)
    launch_btn = gr.Button("Launch", variant="primary", elem_id="launch-button", render=False)
    report = gr.Textbox(label="check report (`finetune-kit check`)", lines=8, elem_id="check-report",
                        interactive=False, render=False)

    @gr.render(inputs=[recipe, config])
    def render_form(recipe_name, config_choice):
        try:
            base = base_config(workspace, config_choice)
            fields = form.form_fields(recipe_name)
        except UserError as err:
            gr.Markdown(f"**error:** {err}", elem_id="form-error")
            return
        widgets = []
        for group in form.GROUPS:
            members = [f for f in fields if f.group == group]
            if not members:
                continue
            with gr.Accordion(f"{group} ({len(members)})", open=group != "Training: more keys"):
                with gr.Row(equal_height=False):  # wraps into columns on wide screens
                    for field in members:
                        with gr.Column(min_width=260):
                            widgets.append(_widget(field, base.get(field.name, field.default)))
        names_ = [f.name for f in fields]

        def updates(message: str | None, shown) -> list:
            """Per field: the error in the info line of the field it names, the help everywhere else."""
            values = {f.name: v for f, v in zip(fields, shown)}
            bad = form.error_field(message, names_, values) if message else None
            return [gr.update(info=f"⚠ {message}", elem_classes=[ERROR_CLASS]) if f.name == bad
                    else gr.update(info=f.help or None, elem_classes=[]) for f in fields]

        def checked(shown):
            """(config, the YAML it was checked as, None) or (None, None, the one-line error). The YAML is a fresh
            file: a run's own copy (.board/jobs/<run>/config.yaml, what Resume reads) is written only at launch."""
            try:
                cfg = form.config_from_form(fields, shown, base, recipe_name)
                path = workspace / ".board" / "check" / f"{uuid.uuid4().hex}.yaml"
                form.validate(workspace, recipe_name, cfg, path)
                return cfg, path, None
            except UserError as err:
                return None, None, str(err).splitlines()[0]

        def on_validate(*shown):
            _, path, problem = checked(shown)
            if problem:
                return [f"**error:** {problem}", "", *updates(problem, shown)]
            text = full_check(workspace, recipe_name, path)
            path.unlink(missing_ok=True)
            verdict = text.splitlines()[-1] if text else ""
            if "error:" in text:
                problem = [line for line in text.splitlines() if line.startswith("error:")][-1][7:]
                return [f"**error:** {problem}", text, *updates(problem, shown)]
            return [f"**valid** ({verdict})", text, *updates(None, shown)]

        def on_launch(*shown):
            cfg, path, problem = checked(shown)
            if path is not None:
                path.unlink(missing_ok=True)
            if problem:
                return [f"**error:** {problem}", gr.update(), *updates(problem, shown)]
            try:
                if not cfg.get("output_dir"):
                    raise UserError("config key 'output_dir': give the run folder (inside the workspace).")
                output_dir = _relative(cfg["output_dir"])
                queue.require_idle(output_dir)  # before its config copy is replaced
                own = form.write_config(queue.folder(job_id(output_dir)) / "config.yaml", cfg)
                job = queue.submit(recipe_name, own.relative_to(workspace.resolve()).as_posix(), output_dir)
            except UserError as err:
                return [f"**error:** {err}", gr.update(), *updates(str(err), shown)]
            where = f"queued (#{queue.position(job.id)})" if job.state == "queued" else job.state
            return [f"**launched** {job.output_dir}: {where}. Watch it in the Runs tab.", gr.update(),
                    *updates(None, shown)]

        validate_btn.click(on_validate, widgets, [status, report, *widgets])
        launch_btn.click(on_launch, widgets, [status, report, *widgets])

    with gr.Row():
        validate_btn.render()
        launch_btn.render()
    status.render()
    report.render()

    def _relative(output_dir: str) -> str:
        return inside_workspace(workspace, output_dir).relative_to(workspace.resolve()).as_posix()

    def fresh_choices(recipe_name):  # a YAML written into the workspace since the board started
        return gr.update(choices=config_choices(workspace, recipe_name))

    return {"recipe": recipe, "config": config, "fresh_choices": fresh_choices}
