"""ResAdapt: budget-aware video question answering over a frozen Qwen-VL backbone.

The library behind the app and the command-line entry points (``python -m resadapt.<name>``).
"""
