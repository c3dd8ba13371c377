"""Lifecycle fixtures: an API helper bound to the test clinic (and to another clinic)."""

from __future__ import annotations

import pytest

from tests.lifecycle.support import Api


@pytest.fixture
def api(client, clinic) -> Api:
    return Api(client, clinic)


@pytest.fixture
def other_api(client, other_clinic) -> Api:
    return Api(client, other_clinic)


@pytest.fixture
def settings(settings):
    # Recall webhooks in these tests point at a closed loopback port: nothing ever
    # leaves the machine, whichever worker later picks the deliveries up.
    return settings.replace(webhooks_allow_http_loopback=True)
