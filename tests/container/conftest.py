"""The container tests run only from `make container-test`, which builds the image and names it
in FACEDET_CONTAINER_IMAGE (they need root, podman and minutes of build); `make test` skips them."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("FACEDET_CONTAINER_IMAGE"):
        return
    skip = pytest.mark.skip(reason="container image tests: run `make container-test` (root, podman)")
    for item in items:
        if item.get_closest_marker("container"):
            item.add_marker(skip)
