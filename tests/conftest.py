"""Fixtures shared by the policy tests: each tiny family, and one generated clip."""

import pytest

from resadapt.backbone import Backbone
from resadapt.world import TINY_BACKBONES
from tests.media import write_video


@pytest.fixture(scope="module", params=TINY_BACKBONES)
def backbone(request):
    """Each tiny random family in turn (a test file may define its own ``backbone``)."""
    return Backbone.load(request.param)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A 24-frame 168×224 clip at 8 fps (a test file may define its own ``video``)."""
    path = tmp_path_factory.mktemp("v") / "clip.mp4"
    return str(write_video(path, num_frames=24, fps=8, height=168, width=224))
