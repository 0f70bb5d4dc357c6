"""The start page ``/`` and the health probes, with the Django test client against the test
database and the configured (real) broker, or an address where nothing listens."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client

from jobs.models import Job, JobStatus
from tests.harness import free_port

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    cache.clear()


def _job(principal: Any, status: str) -> Job:
    return Job.objects.create(principal=principal.user, session_id="home", job_type="demo.noop", scope="demo",
                              status=status)


def test_anyone_sees_links_and_components_but_not_counts(client: Client, principal: Any) -> None:
    # given
    _job(principal, JobStatus.QUEUED)

    # when
    response = client.get("/")

    # then
    assert response.status_code == 200
    html = response.content.decode()
    for href in ('href="/api/docs/"', 'href="/admin/"', 'href="/admin/monitor/"'):
        assert href in html
    for part in ('id="workers"', 'id="beat"', 'id="broker"', 'id="database"'):
        assert part in html
    assert 'id="counts"' not in html
    assert 'id="counts-login"' in html


def test_staff_see_counts_by_status(client: Client, make_principal: Any, principal: Any) -> None:
    # given: two queued jobs, one dead-lettered, and a staff login
    _job(principal, JobStatus.QUEUED)
    _job(principal, JobStatus.QUEUED)
    _job(principal, JobStatus.DEAD_LETTERED)
    staff = make_principal(username="ops", grants=(), staff=True)
    client.force_login(staff.user)

    # when
    response = client.get("/")

    # then
    assert response.status_code == 200
    counts = dict(response.context["counts"])
    assert counts[JobStatus.QUEUED] == 2
    assert counts[JobStatus.DEAD_LETTERED] == 1
    assert counts[JobStatus.SUCCEEDED] == 0
    assert response.context["total"] == 3
    assert 'id="counts"' in response.content.decode()


def test_page_answers_when_the_broker_is_down(client: Client, settings: Any) -> None:
    # given: a broker address where nothing listens
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{free_port()}/0"

    # when
    response = client.get("/")

    # then: the page renders and says the broker does not answer
    assert response.status_code == 200
    assert "the broker does not answer" in response.content.decode()
    assert "not reachable" in response.content.decode()


def test_health_and_readiness(client: Client, settings: Any) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.content
    assert ready.json()["checks"] == {"database": True, "broker": True}

    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{free_port()}/0"
    down = client.get("/readyz")
    assert down.status_code == 503
    assert down.json()["checks"] == {"database": True, "broker": False}
