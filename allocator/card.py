"""The allocator's model card: the ``README.md`` beside its weights (Hugging Face convention).

Owns the card's Jinja template. Knows nothing about the network.
"""

MODEL_CARD = (
    "---\n{{ card_data }}\n---\n\n"
    "# ResAdapt allocator\n\n"
    "A query-aware resolution allocator: for every {{ config.frames_per_chunk }}-frame chunk of a "
    'video it reads {% if config.thumb_encoder == "probe" %}the backbone\'s own low-resolution '
    "pass{% else %}{{ config.thumb_side }}-pixel thumbnails{% endif %} and the question and picks "
    "the scale "
    "in [{{ config.scale_min }}, {{ config.scale_max }}] at which the frozen vision-language "
    'backbone encodes that chunk{% if config.thumb_encoder != "probe" %}, before the backbone sees '
    "any pixel{% endif %}.\n\n"
    '{% if config.thumb_encoder == "probe" %}'
    "## What the head reads\n\n"
    "A probe head: instead of thumbnails it reads the frozen "
    '{{ config.probe_backbone or "backbone" }}\'s own pass over every chunk at one low size '
    "({{ config.probe_budget }} × the full-resolution visual tokens) with the question, through "
    "its first {{ config.probe_layers }} language-model layers: per chunk, the share of the "
    "attention to visual tokens for each of {{ config.probe_layers }} layers × "
    "{{ config.probe_heads }} heads, from the positions after the video and from the answer "
    "position, and the chunk's mean hidden state ({{ config.probe_hidden_size }} wide) at each of "
    "those layers. A linear read-out of the attention log ratios biases each chunk's Beta; "
    "{% if num_parameters %}{{ num_parameters }} trainable parameters; {% endif %}"
    "trained by CAPO alone (no attention distillation). The budget is "
    "{% if config.fills_budget %}filled{% else %}a ceiling: it may spend less{% endif %}.\n\n"
    "{% if train_cost %}Training cost: {{ train_cost }}.\n\n{% endif %}"
    "{% endif %}"
    "## Backbone\n\n"
    "It only fits the backbone it was trained against; ResAdapt refuses to load it with any "
    "other.\n\n"
    "| | |\n|---|---|\n"
    '| backbone | {{ config.backbone or "not recorded" }} |\n'
    '| model type | {{ config.backbone_model_type or "not recorded" }} |\n'
    "| patch factor (pixels per visual token side) | "
    '{{ config.backbone_patch_factor or "not recorded" }} |\n'
    "| frames per chunk | {{ config.frames_per_chunk }} |\n"
    "| thumbnail side | {{ config.thumb_side }} px |\n"
    "| tokenizer vocabulary | {% if config.backbone_vocab_size %}"
    "{{ config.backbone_vocab_size }} tokens, sha256 `{{ config.backbone_vocab_sha256 }}`"
    "{% else %}not recorded{% endif %} |\n"
    "| chat template sha256 | {% if config.backbone_chat_template_sha256 %}"
    "`{{ config.backbone_chat_template_sha256 }}`{% else %}not recorded{% endif %} |\n"
    "{% if train_command %}\n## Training\n\n```bash\n{{ train_command }}\n```\n{% endif %}"
    "{% if validation %}\n## Validation\n\n| | |\n|---|---|\n"
    "{% for name, value in validation.items() %}| {{ name }} | {{ value }} |\n{% endfor %}"
    "{% endif %}\n"
    "## Use\n\n```bash\n"
    'python -m resadapt.ask VIDEO "QUESTION" --backbone {{ config.backbone or "BACKBONE" }} '
    "--allocator THIS_FOLDER --budget 0.15\n```\n\n"
    "`config.json` holds the architecture and the backbone signature above; `model.safetensors` "
    "the weights.\n"
)
"""The allocator's model card (``README.md`` next to its weights, the Hugging Face convention);
Jinja with ``config`` (the AllocatorConfig) and, when given, ``train_command`` (str),
``validation`` (name → figure), and for a probe head ``num_parameters`` and ``train_cost`` (str)."""
