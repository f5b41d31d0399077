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
    operator: str = ui.OWN_OPERATOR,
    encode_budget: float = 0,
) -> dict:
    """Answer a question about a video: the `python -m resadapt.ask --json` object."""
    form = ui.Form(question, policy, budget, max_visual_tokens, num_frames, fps, max_new_tokens,
                   operator, encode_budget)  # fmt: skip
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
    operator: str = ui.OWN_OPERATOR,
    encode_budget: float = 0,
    progress=gr.Progress(),  # noqa: B008 (gradio injects progress through the default)
):
    """Stream the answer; show the budget charts, the resized frames and the summary."""
    form = ui.Form(question, policy, budget, max_visual_tokens, num_frames, fps, max_new_tokens,
                   operator, encode_budget)  # fmt: skip
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
    operator: str = ui.OWN_OPERATOR,
    encode_budget: float = 0,
    progress=gr.Progress(),  # noqa: B008
) -> dict:
    """The same question at the same budget through learned (or attention), uniform and vanilla."""
    form = ui.Form(question, policy, budget, max_visual_tokens, num_frames, fps, max_new_tokens,
                   operator, encode_budget)  # fmt: skip
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
@dataclass
class Page:
    """The components the page's events read or write (built by :func:`build_layout`)."""

    inputs: list
    """The question's form, in the order of the callbacks' arguments."""
    live: list
    """What a streamed answer updates, in the order of ``ui.answer_views``' outputs."""
    buttons: tuple[gr.Button, gr.Button, gr.Button]
    """Answer, Compare policies, Stop."""
    comparison: tuple[gr.JSON, gr.Dataframe, gr.LinePlot]
    """What /compare returns, then the table and the chart made from it."""
    examples: gr.Examples
    api_only: gr.Button
    """Hidden: the button behind /answer (the JSON object without the streamed views)."""

    @property
    def question(self) -> gr.Textbox:
        """The question box (Enter in it answers)."""
        return self.inputs[1]

    @property
    def result_json(self) -> gr.JSON:
        """The JSON result, also what /answer returns."""
        return self.live[-1]


def build_layout(pipeline: Pipeline) -> Page:
    """The page's widgets, placed in the open ``gr.Blocks``; no event is wired here."""
    gr.Markdown(
        "# ResAdapt — where did the visual-token budget go?\n"
        "A policy picks a resolution for every 2-frame chunk *before* the frozen Qwen-VL "
        "backbone encodes it. Upload a video (or pick an example), ask, and see the budget "
        "per frame against full resolution."
    )
    gr.Markdown(ui.status_markdown(pipeline), elem_id="status")
    with gr.Row():
        with gr.Column(scale=2) as left:
            inputs, buttons = _form(pipeline)
        with gr.Column(scale=3):
            live = _answer_views()
    comparison = _comparison_views()
    with left:
        examples = gr.Examples(
            ui.example_rows(),
            inputs[:2],  # the video and the question
            label="Examples (one click runs them)",
            cache_examples=False,
            api_visibility="private",
        )
    api_only = gr.Button(visible=False)
    return Page(inputs, live, buttons, comparison, examples, api_only)


def _form(pipeline: Pipeline) -> tuple[list, tuple[gr.Button, gr.Button, gr.Button]]:
    """The video, the question, the buttons and the policy / budget / frames settings: the form's
    components (``Page.inputs``) and the buttons (``Page.buttons``)."""
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
            num_frames = gr.Number(0, precision=0, minimum=0, label="Frames (0 = by fps)")
            fps = gr.Number(ui.Form.fps, minimum=0.05, label="Frames per second")
        max_new_tokens = gr.Slider(
            1, 256, value=ui.Form.max_new_tokens, step=1, label="Max new tokens"
        )
        with gr.Row():
            operator = gr.Radio(
                list(ui.OPERATOR_CHOICES),
                value=ui.OWN_OPERATOR,
                label="Operator after the policy (select: drop chunks; prune: after the tower)",
            )
            encode_budget = gr.Slider(
                0, 1, value=0, step=0.05, label="+prune: tower's share of the tokens (0 = default)"
            )
    inputs = [video, question, policy, budget, max_visual_tokens, num_frames, fps, max_new_tokens,
              operator, encode_budget]  # fmt: skip
    return inputs, (ask_btn, compare_btn, stop_btn)


def _time_plot(y: str, title: str, elem_id: str, **extra) -> gr.LinePlot:
    """A line plot of column ``y`` against ``time_s`` (seconds), 240 px high."""
    return gr.LinePlot(
        x="time_s",
        y=y,
        title=title,
        x_title="time (s)",
        y_title=y,
        height=240,
        elem_id=elem_id,
        **extra,
    )


def _answer_views() -> list:
    """The answer, the summary, the budget charts, the resized frames and the JSON result, in the
    order of ``Page.live``."""
    answer_box = gr.Textbox(label="Answer", lines=2, elem_id="answer")
    summary = gr.Markdown(elem_id="summary")
    with gr.Row():
        tokens_plot = _time_plot(
            "tokens",
            "Visual tokens over time (per 2-frame chunk)",
            "budget-chart",
            tooltip=["time_s", "frame", "chunk", "scale", "tokens", "size"],
        )
        scale_plot = _time_plot("scale", "Scale per frame", "scale-chart", y_lim=[0, 1])
    gallery = gr.Gallery(
        label="Sampled frames at their allocated resolution (on a full-size canvas)",
        columns=4,
        height=380,
        object_fit="contain",
        elem_id="frames",
    )
    with gr.Accordion("JSON (what /answer returns)", open=False):
        result_json = gr.JSON(label="Result")
    return [answer_box, tokens_plot, scale_plot, gallery, summary, result_json]


def _comparison_views() -> tuple[gr.JSON, gr.Dataframe, gr.LinePlot]:
    """The policies side by side: the JSON comparison, a table and a tokens-over-time chart."""
    with gr.Accordion("Compare policies at the same budget (button above)"):
        compare_table = gr.Dataframe(
            headers=list(ui.COMPARE_COLUMNS), label="Side by side", elem_id="compare-table"
        )
        compare_plot = _time_plot(
            "tokens", "Visual tokens per frame by policy", "compare-chart", color="policy"
        )
        with gr.Accordion("JSON (what /compare returns)", open=False):
            compare_json = gr.JSON(label="Comparison")
    return compare_json, compare_table, compare_plot


# ---------------------------------------------------------------------------------------- wiring
def wire_events(page: Page) -> None:
    """The page's events, registered in the open ``gr.Blocks``: an answer (streamed) from an
    example, the button or Enter; Stop; the comparison; the /answer and /compare endpoints."""
    inputs, live = page.inputs, page.live
    ask_btn, compare_btn, stop_btn = page.buttons
    compare_json, compare_table, compare_plot = page.comparison
    private = dict(concurrency_id=MODEL_GROUP, api_visibility="private")
    # Stopping (the button, or a client that went away) closes the running generator, which
    # stops generation at its next step (Backbone.stream): the next queued request starts.
    runs = [
        page.examples.load_input_event.then(answer_live, inputs, live, **private),
        ask_btn.click(answer_live, inputs, live, **private),
        page.question.submit(answer_live, inputs, live, **private),
    ]
    stop_btn.click(None, None, None, cancels=runs, api_visibility="private")
    compare_btn.click(
        compare, inputs, compare_json, concurrency_id=MODEL_GROUP, api_name="compare"
    ).success(
        show_comparison, compare_json, [compare_table, compare_plot], api_visibility="private"
    )
    page.api_only.click(
        answer, inputs, page.result_json, concurrency_id=MODEL_GROUP, api_name="answer"
    )


def build_demo(pipeline: Pipeline) -> gr.Blocks:
    """The app around a loaded pipeline, its queue configured (not launched)."""
    global PIPELINE
    PIPELINE = pipeline
    gr.set_static_paths([str(EXAMPLES)])
    with gr.Blocks(title="ResAdapt") as demo:
        wire_events(build_layout(pipeline))
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
