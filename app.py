"""ResAdapt's Gradio app: upload a video, ask, and see where the visual-token budget went.

UI wiring only: arguments, widgets, events, launch. Every callback calls one function of
:mod:`resadapt.ui` (:mod:`resadapt.chat_ui` for the chat); models are loaded once in :func:`main`
(at import on a Hugging Face Space, ZeroGPU's convention). Named API endpoints: ``/answer`` (the
``python -m resadapt.ask --json`` object), ``/compare`` and ``/chat`` (history in and out).

    python app.py [--host 127.0.0.1] [--port 7860] [--backbone B] [--allocator PATH] [--share]
        [--history text|none]
"""

from __future__ import annotations

import functools
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
from resadapt import chat_ui, cli, ui, zerogpu
from resadapt.assets import EXAMPLES
from resadapt.chat import Chat, ChatConfig
from resadapt.config import ModelConfig
from resadapt.errors import ResAdaptError
from resadapt.pipeline import Pipeline, load_pipeline

QUEUE_SIZE = 16
"""Requests that may wait in the queue; more are turned away."""
CONCURRENCY = 1
"""Model runs at once, across all events (they share one concurrency group)."""
MODEL_GROUP = "model"
ON_SPACE = os.environ.get("SPACE_ID") is not None
"""Running as a Hugging Face Space (the platform sets SPACE_ID)."""
CACHE_EXAMPLES = "lazy" if ON_SPACE else False
"""Example caching: lazy on a Space (an example runs once, when first clicked, so start-up spends
no GPU time), off elsewhere (a click runs the example live)."""

logger = logging.getLogger("app")

PIPELINE: Pipeline | None = None
"""The loaded models, set once by :func:`build_demo`; every callback reads it."""
CHAT: Chat | None = None
"""The chat over :data:`PIPELINE` (its decode cache), set once by :func:`chat_view`."""


# ---------------------------------------------------------------------------------------- ZeroGPU
def answer_seconds(
    video: str | None,
    question: str | None = None,
    policy: str | None = None,
    budget: float | None = ui.DEFAULT_RETENTION,
    max_visual_tokens: float | None = None,
    num_frames: float | None = None,
    fps: float | None = ui.Form.fps,
    max_new_tokens: float | None = ui.Form.max_new_tokens,
    *rest,
    runs: int = 1,
    **kwargs,
) -> int:
    """ZeroGPU seconds of one answer: called with the callback's own arguments."""
    policy = policy or (PIPELINE.default_policy if PIPELINE is not None else None)
    return zerogpu.request_seconds(video, policy, budget, num_frames, fps, max_new_tokens, runs)


def compare_seconds(*args, **kwargs) -> int:
    """ZeroGPU seconds of a comparison: one answer per compared policy."""
    runs = len(ui.compare_policies(PIPELINE)) if PIPELINE is not None else 1
    return answer_seconds(*args, runs=runs, **kwargs)


def chat_seconds(video, question, history, *settings, **kwargs) -> int:
    """ZeroGPU seconds of one chat turn (the history is text: it adds no visual tokens)."""
    return answer_seconds(video, question, *settings, **kwargs)


def gpu(fn=None, *, duration=answer_seconds):
    """``spaces.GPU(duration=...)`` on ZeroGPU Spaces (``duration`` is called with the callback's
    arguments); elsewhere the function itself. ``spaces`` returns the function itself too when
    ZeroGPU is off."""
    if fn is None:
        return functools.partial(gpu, duration=duration)
    return fn if spaces is None else spaces.GPU(duration=duration)(fn)


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


@gpu(duration=compare_seconds)
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


@gpu
def answer_example(video: str, question: str):
    """A bundled example at the app's defaults, every output at once (a cached example's)."""
    try:
        return ui.answer_outputs(PIPELINE, video, ui.Form(question))
    except ResAdaptError as e:
        raise user_error(e) from e


def show_comparison(comparison: dict | None):
    """The comparison as a side-by-side table and a tokens-over-time chart per policy."""
    if not comparison:
        return gr.skip(), gr.skip()
    return ui.compare_views(comparison)


# ---------------------------------------------------------------------------------------- chat
@gpu(duration=chat_seconds)
def chat(
    video: str,
    question: str,
    history: list[dict],
    policy: str,
    budget: float,
    max_visual_tokens: float,
    num_frames: float,
    fps: float,
    max_new_tokens: float,
    operator: str = ui.OWN_OPERATOR,
    encode_budget: float = 0,
) -> tuple[list[dict], dict]:
    """The next turn of a chat about a video: the messages after it, and its ask --json object."""
    form = ui.Form(question, policy, budget, max_visual_tokens, num_frames, fps, max_new_tokens,
                   operator, encode_budget)  # fmt: skip
    try:
        return chat_ui.chat_json(CHAT, video, form, history)
    except ResAdaptError as e:
        raise user_error(e) from e


@gpu(duration=chat_seconds)
def chat_live(
    video: str,
    question: str,
    history: list[dict],
    policy: str,
    budget: float,
    max_visual_tokens: float,
    num_frames: float,
    fps: float,
    max_new_tokens: float,
    operator: str,
    encode_budget: float,
    results: list[dict],
):
    """Stream the next turn into the chat; then the budget chart of every turn."""
    form = ui.Form(question, policy, budget, max_visual_tokens, num_frames, fps, max_new_tokens,
                   operator, encode_budget)  # fmt: skip
    try:
        for i, view in enumerate(chat_ui.chat_views(CHAT, video, form, history, results)):
            outputs = [gr.skip() if value is None else value for value in view.outputs()]
            if i == 0:  # emptied first: the chart takes a new turn's colour only when redrawn
                outputs[1] = None
            yield tuple(outputs)
    except ResAdaptError as e:
        raise user_error(e) from e


def clear_chat():
    """An empty chat: no messages, an empty chart, no results, no question."""
    return [], None, [], ""


def clear_question() -> str:
    return ""


def chat_view(pipeline: Pipeline, video: gr.Video, settings: list, history: str) -> None:
    """The chat under the single answer: follow-up questions about the uploaded video, each turn
    allocated for its own question with the policy, budget and frames set above; a new video
    starts a new chat. Wires ``/chat``."""
    global CHAT
    CHAT = chat_ui.make_chat(pipeline, history)
    with gr.Accordion("Chat: follow-up questions about this video, a budget per turn"):
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Chat", height=640, elem_id="chat")
                chat_question = gr.Textbox(
                    label="Ask about the video (the policy, budget and frames above apply)",
                    lines=2,
                    elem_id="chat-question",
                )
                with gr.Row():
                    send_btn = gr.Button("Send", variant="primary", elem_id="chat-send")
                    chat_stop_btn = gr.Button("Stop", variant="stop", elem_id="chat-stop")
                    clear_btn = gr.Button("Clear chat", elem_id="chat-clear")
            with gr.Column(scale=2):
                moved_plot = _time_plot(
                    "tokens",
                    "How the budget moved: visual tokens per chunk, one line per turn",
                    "moved-chart",
                    height=360,
                    color="turn",
                )
                with gr.Accordion("JSON (what /chat returns for the last turn)", open=False):
                    turn_json = gr.JSON(label="Turn")
    results = gr.State([])
    private = dict(concurrency_id=MODEL_GROUP, api_visibility="private")
    inputs = [video, chat_question, chatbot, *settings, results]
    outputs = [chatbot, moved_plot, results]
    runs = [
        send_btn.click(chat_live, inputs, outputs, **private),
        chat_question.submit(chat_live, inputs, outputs, **private),
    ]
    for run in runs:
        run.success(clear_question, None, chat_question, api_visibility="private")
    chat_stop_btn.click(None, None, None, cancels=runs, api_visibility="private")
    cleared = [chatbot, moved_plot, results, chat_question]
    clear_btn.click(clear_chat, None, cleared, api_visibility="private")
    video.change(clear_chat, None, cleared, api_visibility="private")
    api_only = gr.Button(visible=False)  # /chat: history in, (history, turn) out
    api_only.click(
        chat,
        [video, chat_question, chatbot, *settings],
        [chatbot, turn_json],
        concurrency_id=MODEL_GROUP,
        api_name="chat",
    )


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
            fn=answer_example,
            outputs=live,
            cache_examples=bool(CACHE_EXAMPLES),
            cache_mode="lazy",
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


def _time_plot(y: str, title: str, elem_id: str, height: int = 240, **extra) -> gr.LinePlot:
    """A line plot of column ``y`` against ``time_s`` (seconds), ``height`` px high."""
    return gr.LinePlot(
        x="time_s",
        y=y,
        title=title,
        x_title="time (s)",
        y_title=y,
        height=height,
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
        ask_btn.click(answer_live, inputs, live, **private),
        page.question.submit(answer_live, inputs, live, **private),
    ]
    if not CACHE_EXAMPLES:  # a cached example shows its stored outputs instead
        runs.append(page.examples.load_input_event.then(answer_live, inputs, live, **private))
    stop_btn.click(None, None, None, cancels=runs, api_visibility="private")
    compare_btn.click(
        compare, inputs, compare_json, concurrency_id=MODEL_GROUP, api_name="compare"
    ).success(
        show_comparison, compare_json, [compare_table, compare_plot], api_visibility="private"
    )
    page.api_only.click(
        answer, inputs, page.result_json, concurrency_id=MODEL_GROUP, api_name="answer"
    )


def build_demo(pipeline: Pipeline, history: str = "text") -> gr.Blocks:
    """The app around a loaded pipeline, its queue configured (not launched); ``history``: how
    the chat's earlier turns reach the backbone (resadapt.chat.HISTORY_MODES)."""
    global PIPELINE
    PIPELINE = pipeline
    gr.set_static_paths([str(EXAMPLES)])
    with gr.Blocks(title="ResAdapt") as demo:
        page = build_layout(pipeline)
        wire_events(page)
        chat_view(pipeline, page.inputs[0], page.inputs[2:], history)
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
            ChatConfig,
            prog="python app.py",
            description=__doc__.splitlines()[0],
        )
        cli.setup_logging(logging.INFO)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
        serve = cli.make(ServeConfig, args)
        config = cli.make(ModelConfig, args)
        loaded = SPACE_PIPELINE if SPACE_PIPELINE is not None and config == ModelConfig() else None
        pipeline = loaded or load_pipeline(config)
        build_demo(pipeline, cli.make(ChatConfig, args).history).launch(
            server_name=serve.host,
            server_port=serve.port,
            share=serve.share,
            max_file_size=ui.MAX_UPLOAD_BYTES,
        )

    return cli.run(body)


SPACE_PIPELINE: Pipeline | None = load_pipeline(ModelConfig()) if ON_SPACE else None
"""On a Space, the default models loaded at import (ZeroGPU moves them to its GPU per call)."""


if __name__ == "__main__":
    sys.exit(main())
