"""ResAdapt's Gradio app: upload a video, ask, and see where the visual-token budget went.

UI wiring only: arguments, widgets, events, launch. Every callback calls one function of
:mod:`resadapt.ui`; models are loaded once in :func:`main`. Named API endpoints: ``/answer``
(the ``python -m resadapt.ask --json`` object) and ``/compare``.

    python app.py [--host 127.0.0.1] [--port 7860] [--backbone B] [--allocator PATH] [--share]
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

try:  # Hugging Face ZeroGPU: imported before torch, and used only where the package exists
    import spaces
except ImportError:
    spaces = None

import gradio as gr

import resadapt.world  # noqa: F401 (an entry point: registers the tiny random backbones)
from resadapt import cli, ui
from resadapt.assets import EXAMPLES
from resadapt.errors import ResAdaptError
from resadapt.pipeline import ModelConfig, Pipeline, load_pipeline

QUEUE_SIZE = 16
"""Requests that may wait in the queue; more are turned away."""
CONCURRENCY = 1
"""Model runs at once, across all events (they share one concurrency group)."""
MODEL_GROUP = "model"
GPU_SECONDS = 120
"""ZeroGPU time requested per call, in seconds."""

logger = logging.getLogger("app")

PIPELINE: Pipeline | None = None
"""The loaded models, set once by :func:`build_demo`; every callback reads it."""


def gpu(fn):
    """``spaces.GPU`` on ZeroGPU Spaces; elsewhere the function itself."""
    return fn if spaces is None else spaces.GPU(duration=GPU_SECONDS)(fn)


def user_error(error: ResAdaptError) -> gr.Error:
    """A user's mistake as the one sentence the page shows (logged without a traceback)."""
    logger.info("rejected a request: %s", error)
    return gr.Error(str(error), print_exception=False)


# ---------------------------------------------------------------------------------------- callbacks
@gpu
def answer(
    video: str,
    question: str,
    policy: str,
    budget: float,
    max_visual_tokens: float,
    num_frames: float,
    fps: float,
    max_new_tokens: float,
) -> dict:
    """Answer a question about a video: the `python -m resadapt.ask --json` object."""
    form = ui.Form(question, policy, budget, max_visual_tokens, num_frames, fps, max_new_tokens)
    try:
        return ui.answer_json(PIPELINE, video, form)
    except ResAdaptError as e:
        raise user_error(e) from e


@gpu
def answer_live(
    video: str,
    question: str,
    policy: str,
    budget: float,
    max_visual_tokens: float,
    num_frames: float,
    fps: float,
    max_new_tokens: float,
    progress=gr.Progress(),  # noqa: B008 (gradio injects progress through the default)
):
    """Stream the answer; show the budget charts, the resized frames and the summary."""
    form = ui.Form(question, policy, budget, max_visual_tokens, num_frames, fps, max_new_tokens)
    try:
        for view in ui.answer_views(PIPELINE, video, form, report=progress):
            yield tuple(gr.skip() if value is None else value for value in view.outputs())
    except ResAdaptError as e:
        raise user_error(e) from e


@gpu
def compare(
    video: str,
    question: str,
    policy: str,
    budget: float,
    max_visual_tokens: float,
    num_frames: float,
    fps: float,
    max_new_tokens: float,
    progress=gr.Progress(),  # noqa: B008
) -> dict:
    """The same question at the same budget through learned (or attention), uniform and vanilla."""
    form = ui.Form(question, policy, budget, max_visual_tokens, num_frames, fps, max_new_tokens)
    try:
        return ui.compare(PIPELINE, video, form, report=progress)
    except ResAdaptError as e:
        raise user_error(e) from e


def show_comparison(comparison: dict | None):
    """The comparison as a side-by-side table and a tokens-over-time chart per policy."""
    if not comparison:
        return gr.skip(), gr.skip()
    return ui.compare_views(comparison)


# ---------------------------------------------------------------------------------------- layout
def build_demo(pipeline: Pipeline) -> gr.Blocks:
    """The app around a loaded pipeline, its queue configured (not launched)."""
    global PIPELINE
    PIPELINE = pipeline
    gr.set_static_paths([str(EXAMPLES)])
    with gr.Blocks(title="ResAdapt") as demo:
        gr.Markdown(
            "# ResAdapt — where did the visual-token budget go?\n"
            "A policy picks a resolution for every 2-frame chunk *before* the frozen Qwen-VL "
            "backbone encodes it. Upload a video (or pick an example), ask, and see the budget "
            "per frame against full resolution."
        )
        gr.Markdown(ui.status_markdown(pipeline), elem_id="status")
        with gr.Row():
            with gr.Column(scale=2) as left:
                video = gr.Video(label="Video", sources=["upload"], height=260)
                question = gr.Textbox(label="Question", lines=2, placeholder="Ask about the video")
                with gr.Row():
                    ask_btn = gr.Button("Answer", variant="primary", elem_id="ask")
                    compare_btn = gr.Button("Compare policies", elem_id="compare")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                with gr.Accordion("Policy, budget and frames"):
                    policy = gr.Radio(
                        ui.policy_choices(pipeline),
                        value=pipeline.default_policy,
                        label="Policy",
                    )
                    budget = gr.Slider(
                        0,
                        1,
                        value=ui.DEFAULT_RETENTION,
                        step=0.05,
                        label="Budget: retention of the full-resolution tokens (0 = no cap)",
                    )
                    max_visual_tokens = gr.Number(
                        0, precision=0, minimum=0, label="Visual-token cap (0 = none)"
                    )
                    with gr.Row():
                        num_frames = gr.Number(
                            0, precision=0, minimum=0, label="Frames (0 = by fps)"
                        )
                        fps = gr.Number(ui.Form.fps, minimum=0.05, label="Frames per second")
                    max_new_tokens = gr.Slider(
                        1, 256, value=ui.Form.max_new_tokens, step=1, label="Max new tokens"
                    )
            with gr.Column(scale=3):
                answer_box = gr.Textbox(label="Answer", lines=2, elem_id="answer")
                summary = gr.Markdown(elem_id="summary")
                with gr.Row():
                    tokens_plot = gr.LinePlot(
                        x="time_s",
                        y="tokens",
                        title="Visual tokens over time (per 2-frame chunk)",
                        x_title="time (s)",
                        y_title="tokens",
                        height=240,
                        elem_id="budget-chart",
                        tooltip=["time_s", "frame", "chunk", "scale", "tokens", "size"],
                    )
                    scale_plot = gr.LinePlot(
                        x="time_s",
                        y="scale",
                        title="Scale per frame",
                        x_title="time (s)",
                        y_title="scale",
                        y_lim=[0, 1],
                        height=240,
                        elem_id="scale-chart",
                    )
                gallery = gr.Gallery(
                    label="Sampled frames at their allocated resolution (on a full-size canvas)",
                    columns=4,
                    height=380,
                    object_fit="contain",
                    elem_id="frames",
                )
                with gr.Accordion("JSON (what /answer returns)", open=False):
                    result_json = gr.JSON(label="Result")
        with gr.Accordion("Compare policies at the same budget (button above)"):
            compare_table = gr.Dataframe(
                headers=list(ui.COMPARE_COLUMNS), label="Side by side", elem_id="compare-table"
            )
            compare_plot = gr.LinePlot(
                x="time_s",
                y="tokens",
                color="policy",
                title="Visual tokens per frame by policy",
                x_title="time (s)",
                y_title="tokens",
                height=240,
                elem_id="compare-chart",
            )
            with gr.Accordion("JSON (what /compare returns)", open=False):
                compare_json = gr.JSON(label="Comparison")

        inputs = [
            video,
            question,
            policy,
            budget,
            max_visual_tokens,
            num_frames,
            fps,
            max_new_tokens,
        ]
        live = [answer_box, tokens_plot, scale_plot, gallery, summary, result_json]
        private = dict(concurrency_id=MODEL_GROUP, api_visibility="private")
        with left:
            examples = gr.Examples(
                ui.example_rows(),
                [video, question],
                label="Examples (one click runs them)",
                cache_examples=False,
                api_visibility="private",
            )
        # Stopping (the button, or a client that went away) closes the running generator, which
        # stops generation at its next step (Backbone.stream): the next queued request starts.
        runs = [
            examples.load_input_event.then(answer_live, inputs, live, **private),
            ask_btn.click(answer_live, inputs, live, **private),
            question.submit(answer_live, inputs, live, **private),
        ]
        stop_btn.click(None, None, None, cancels=runs, api_visibility="private")
        compare_btn.click(
            compare, inputs, compare_json, concurrency_id=MODEL_GROUP, api_name="compare"
        ).success(
            show_comparison, compare_json, [compare_table, compare_plot], api_visibility="private"
        )
        api_only = gr.Button(visible=False)  # /answer: the JSON object without the streamed views
        api_only.click(answer, inputs, result_json, concurrency_id=MODEL_GROUP, api_name="answer")
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    return demo


# ---------------------------------------------------------------------------------------- main
@dataclass
class ServeConfig:
    """Where the app listens (the models it serves are a :class:`ModelConfig`)."""

    host: str = cli.option(
        "address to serve on (default: $GRADIO_SERVER_NAME or 127.0.0.1)",
        default_factory=lambda: os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
    )
    port: int = cli.option(
        "port to serve on (default: $GRADIO_SERVER_PORT or 7860)",
        default_factory=lambda: int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    )
    share: bool = cli.option("also serve on a public gradio.live link", False)


def main(argv: list[str] | None = None) -> int:
    def body() -> None:
        args = cli.parse(
            argv,
            ServeConfig,
            ModelConfig,
            prog="python app.py",
            description=__doc__.splitlines()[0],
        )
        cli.setup_logging(logging.INFO)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
        serve = cli.make(ServeConfig, args)
        pipeline = load_pipeline(cli.make(ModelConfig, args))
        build_demo(pipeline).launch(
            server_name=serve.host,
            server_port=serve.port,
            share=serve.share,
            max_file_size=ui.MAX_UPLOAD_BYTES,
        )

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
