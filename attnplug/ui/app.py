"""The Gradio page: the form (generated from config metadata), per-task defaults, the outputs, and the
``/generate`` endpoint. Every value is checked by the app (:func:`attnplug.ui.requests.parse_request`), which names the
field; Gradio's own range checks are kept out of the way, so a user error is one message and no server traceback."""

from __future__ import annotations

import inspect
import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home

import gradio as gr  # noqa: E402

from .forms import (  # noqa: E402
    AUTO,
    DEFAULT_MODEL,
    TASK_METHODS,
    TASKS,
    FormField,
    available_pipelines,
    input_keys,
    method_forms,
    pipeline_forms,
    schedule_form,
)
from .generation import generate  # noqa: E402
from .models import ModelCache, embedded_models  # noqa: E402
from .requests import LIMITS, parse_request  # noqa: E402

logger = logging.getLogger("attnplug.ui")

QUEUE_SIZE = 16
CONCURRENCY = 2  # events at once; generations on one model are serialised by that model's lock
CSS = """
#out-image img, #dense-image img {width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated;}
#out-video video, #dense-video video {image-rendering: pixelated;}
"""  # tiny generated images are shown enlarged without smoothing; the files keep the generated size
METHOD_HELP = {"agent": "agents gather from all keys and broadcast back (fast; images)",
               "dense": "exact attention through attnplug (the reference)",
               "freeswim": "sliding windows of the training size + a full-attention branch (hi-res)",
               "neighborhood": "each token attends to its neighbours (hi-res, long grids)",
               "sparse_video": "block-sparse attention for video (tiles, heads, top-k)",
               "window": "shifted windows (HiDiffusion; hi-res)"}


def Slider(*args, **kwargs) -> gr.Slider:  # noqa: N802 - stands in for the component class
    """A ``gr.Slider`` whose bounds are the page's only: the value is checked by the app, which names the field
    (Gradio's own check would answer first with "Value 0 is less than minimum value 1." and a server traceback). The
    check is skipped on the instance: a subclass would make Gradio write a stub file beside this module."""
    slider = gr.Slider(*args, **kwargs)
    slider.preprocess = _as_given
    return slider


def _as_given(payload):
    return payload


def _component(ff: FormField) -> gr.components.Component:
    spec, info = ff.spec, (ff.spec.help or None)
    if ff.kind == "dropdown":
        return gr.Dropdown([c for c, _ in ff.choices], value=ff.default_ui, label=spec.name, info=info)
    if ff.kind == "checkbox":
        return gr.Checkbox(value=bool(spec.default), label=spec.name, info=info)
    if ff.kind == "slider":
        step = 1 if spec.type == "int" else (spec.max - spec.min) / 100
        return Slider(spec.min, spec.max, value=spec.default, step=step, label=spec.name, info=info)
    if ff.kind == "number":
        return gr.Number(value=spec.default, label=spec.name, info=info, precision=None)
    placeholder = f"{spec.type}; default {spec.default!r}"
    return gr.Textbox(value=ff.default_ui, label=f"{spec.name} ({spec.type})", info=info, placeholder=placeholder)


def _method_choices(names) -> list[tuple[str, str]]:
    auto = (f"{AUTO}: the task's default ({', '.join(f'{t}: {m}' for t, m in TASK_METHODS.items())})", AUTO)
    return [auto] + [(f"{name}: {METHOD_HELP[name]}" if name in METHOD_HELP else name, name) for name in names]


def _inputs(comps: dict, m_forms, s_form, p_forms) -> tuple[dict, dict]:
    """The left column: model, prompt, sizes, method and its options, schedule, pipeline; returns the option
    groups of the methods and of the pipelines (shown one at a time)."""
    with gr.Row():
        comps["model"] = gr.Dropdown(embedded_models(), value=DEFAULT_MODEL, label="model",
                                     info="Tiny models that ship with attnplug (offline).", elem_id="model")
        comps["model_path"] = gr.Textbox(label="or a local folder / Hub id", value="",
                                         placeholder="overrides the list when set", elem_id="model-path")
    comps["task"] = gr.Radio(list(TASKS), value="image", label="task", elem_id="task")
    comps["prompt"] = gr.Textbox(value="red circle", label="prompt", elem_id="prompt",
                                 info="The tiny models know 'COLOUR SHAPE' and 'COLOUR SHAPE moving DIRECTION'.")
    comps["negative_prompt"] = gr.Textbox(value="", label="negative prompt", elem_id="negative-prompt")
    with gr.Row():
        comps["height"] = gr.Number(16, label="height", precision=0, elem_id="height",
                                    info="try 32: twice the training size, where duplication shows")
        comps["width"] = gr.Number(16, label="width", precision=0, elem_id="width")
        comps["num_frames"] = gr.Number(8, label="frames", precision=0, visible=False, elem_id="frames")
    with gr.Row():
        comps["steps"] = Slider(*LIMITS["steps"], value=20, step=1, label="steps", elem_id="steps")
        comps["guidance"] = Slider(*LIMITS["guidance"], value=3.0, step=0.5, label="guidance", elem_id="guidance")
        comps["seed"] = gr.Number(0, label="seed", precision=0, elem_id="seed")
    comps["method"] = gr.Dropdown(_method_choices(m_forms), value=AUTO, label="method", elem_id="method")
    groups = {}
    for name, forms in m_forms.items():
        with gr.Group(visible=name == TASK_METHODS["image"]) as groups[name]:
            with gr.Accordion(f"{name} options", open=False):
                for ff in forms:
                    comps[ff.key] = _component(ff)
    comps["default_schedule"] = gr.Checkbox(
        True, label="method's default schedule", elem_id="default-schedule",
        info="e.g. agent: the first 40 % of the steps; untick to use the schedule below.")
    with gr.Accordion("schedule (where the method runs; elsewhere attention is dense)", open=False):
        for ff in s_form:
            comps[ff.key] = _component(ff)
    comps["pipeline"] = gr.Radio(available_pipelines(), value="standard", label="pipeline",
                                 info="hi-res: sizes above the training size; long video: more frames than it.",
                                 elem_id="pipeline")
    p_groups = {}
    for label, forms in p_forms.items():
        with gr.Group(visible=False) as p_groups[label]:
            with gr.Accordion(f"{label} options", open=True):
                for ff in forms:
                    comps[ff.key] = _component(ff)
    comps["compare"] = gr.Checkbox(True, label="compare with dense", elem_id="compare",
                                   info="also run the stock pipeline, without attnplug")
    return groups, p_groups


def build_app(cache: ModelCache | None = None) -> gr.Blocks:
    """The Gradio app (queue set: bounded, ``CONCURRENCY`` events at once, one generation per model at a time)."""
    cache = cache or ModelCache()
    m_forms, s_form, p_forms = method_forms(), schedule_form(), pipeline_forms()
    comps: dict[str, gr.components.Component] = {}
    with gr.Blocks(title="attnplug") as demo:
        gr.Markdown("# attnplug\nTraining-free attention methods on a diffusers pipeline, compared with dense "
                    "attention on the same seed.")
        with gr.Row():
            with gr.Column(scale=1):
                groups, p_groups = _inputs(comps, m_forms, s_form, p_forms)
                run_btn = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=1):
                with gr.Row():
                    out_image = gr.Image(label="method", type="filepath", format="png", height=256,
                                         elem_id="out-image", interactive=False)
                    dense_image = gr.Image(label="dense", type="filepath", format="png", height=256,
                                           elem_id="dense-image", interactive=False)
                with gr.Row(visible=False) as video_row:
                    out_video = gr.Video(label="method", height=256, elem_id="out-video", interactive=False,
                                         autoplay=True, loop=True)
                    dense_video = gr.Video(label="dense", height=256, elem_id="dense-video", interactive=False,
                                           autoplay=True, loop=True)
                summary = gr.Markdown("Press **Generate**.", elem_id="summary")
                stats_json = gr.JSON(label="what ran: attnplug.stats(pipe)", elem_id="stats")
        _events(demo, comps, groups, p_groups, [out_image, dense_image, video_row])
        _generate_event(cache, comps, run_btn, [out_image, dense_image, out_video, dense_video, summary, stats_json])
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    demo.model_cache = cache
    return demo


def _events(demo, comps, groups, p_groups, panes) -> None:
    """Showing what belongs to the chosen method, task and pipeline; per-task defaults on a model change."""
    out_image, dense_image, video_row = panes

    def on_method(name, task):
        name = TASK_METHODS[task] if name == AUTO else name
        return [gr.update(visible=n == name) for n in groups]

    comps["method"].change(on_method, [comps["method"], comps["task"]], list(groups.values()), api_name=False)

    def on_task(task, pipeline):
        choices = available_pipelines(task)
        pipeline = pipeline if pipeline in choices else "standard"
        return ([gr.update(visible=task == "video"), gr.update(visible=task == "image"),
                 gr.update(visible=task == "image"), gr.update(visible=task == "video"),
                 gr.update(choices=choices, value=pipeline)] + [gr.update(visible=label == pipeline)
                                                                for label in p_groups])

    outs = [comps["num_frames"], out_image, dense_image, video_row, comps["pipeline"], *p_groups.values()]
    comps["task"].change(on_task, [comps["task"], comps["pipeline"]], outs, api_name=False)
    demo.load(on_task, [comps["task"], comps["pipeline"]], outs, api_name=False)
    comps["pipeline"].change(lambda p: [gr.update(visible=label == p) for label in p_groups], comps["pipeline"],
                             list(p_groups.values()), api_name=False)

    def on_model(name):
        task = "video" if "video" in name else "image"
        return (gr.update(value=task), gr.update(value="blue square moving left" if task == "video" else "red circle"),
                gr.update(value=TASK_METHODS[task]))

    comps["model"].change(on_model, comps["model"], [comps["task"], comps["prompt"], comps["method"]],
                          api_name=False)


def _generate_event(cache, comps, run_btn, outputs) -> None:
    keys = input_keys()

    def on_generate(*values, progress=gr.Progress()):  # noqa: B008 - Gradio's way to ask for a progress bar
        data = dict(zip(keys, values))
        try:
            req = parse_request(data)
            progress(0, desc="loading model")
            result = generate(req, cache, lambda done, total: progress((done, total), desc="denoising",
                                                                       unit="steps"))
        except (ValueError, TypeError, KeyError, FileNotFoundError, OSError) as exc:
            logger.info("generate: rejected: %s", exc)
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception as exc:  # any other failure: a message in the page, the details in the server log
            logger.exception("generate failed")
            raise gr.Error(f"generation failed: {type(exc).__name__}: {exc}", print_exception=False) from None
        image = req.task == "image"
        return (result.method_file if image else None, result.dense_file if image else None,
                None if image else result.method_file, None if image else result.dense_file,
                result.summary, result.stats)

    # Named parameters for the API page and gradio_client (``method__agent__agents=...``), in input order.
    on_generate.__signature__ = inspect.Signature(
        [inspect.Parameter(k.replace(".", "__"), inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in keys]
        + [inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=gr.Progress())]
    )
    run_btn.click(on_generate, [comps[k] for k in keys], outputs, api_name="generate",
                  concurrency_limit=CONCURRENCY)


def serve(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False, **kwargs):
    """Launch ``demo`` with the page's CSS; returns Gradio's ``(app, local_url, share_url)``."""
    return demo.launch(server_name=host, server_port=port, share=share, css=CSS, footer_links=["api"], **kwargs)
