"""The dashboard's JSON API, in-process, over real runs on a memory store."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from starlette.routing import Route

import replay
from replay.dashboard import create_app
from tests.dashboard.conftest import TOKEN, Dashboard
from tests.dashboard.shop import app

JSON = {"content-type": "application/json"}


def test_the_runs_list_has_counts_filters_and_newest_first(dash: Dashboard) -> None:
    body = dash.client.get("/api/runs").json()
    assert body["counts"] == {
        "pending": 0,
        "running": 0,
        "suspended": 2,
        "completed": 4,
        "failed": 2,
        "cancelled": 0,
    }
    assert body["runs"][0]["run_id"] == "audit-a-1"
    assert body["workflows"] == ["audit_order", "checkout", "fulfil"]
    failed = dash.client.get("/api/runs", params={"status": "failed", "workflow": "checkout"}).json()
    assert [r["run_id"] for r in failed["runs"]] == ["checkout-declined-7"]
    assert failed["runs"][0]["error"]["type"] == "StepFailed"
    assert failed["counts"]["completed"] == 3  # counts follow the workflow filter
    assert len(dash.client.get("/api/runs", params={"limit": 2}).json()["runs"]) == 2


def test_a_failed_run_comes_with_its_journal_and_a_timeline_of_its_attempts(dash: Dashboard) -> None:
    body = dash.client.get(f"/api/runs/{dash.ids['failed']}").json()
    assert body["run"]["status"] == "failed"
    assert body["run"]["error"]["cause"] == "ConnectionRefusedError"
    assert "card declined" in body["run"]["error"]["traceback"]
    assert body["journal"][0]["kind"] == "workflow_started"
    assert body["journal"][-1]["kind"] == "workflow_failed"
    spans = body["timeline"]["spans"]
    assert [(s["kind"], s["name"], s["state"]) for s in spans] == [
        ("step", "reserve", "completed"),
        ("timer", "sleep", "fired"),
        ("step", "charge", "failed"),
    ]
    charge = spans[2]
    assert [a["outcome"] for a in charge["attempts"]] == ["failed", "failed", "failed"]
    assert charge["attempts"][0]["retry_at"] - charge["attempts"][0]["end"] == 30
    assert charge["end"] - charge["start"] == 90  # two retry waits: 30 s, then 60 s
    assert body["timeline"]["finished"] is True


def test_a_waiting_run_shows_an_open_wait_and_a_child_id_may_hold_a_slash(dash: Dashboard) -> None:
    wait = dash.client.get(f"/api/runs/{dash.ids['suspended']}").json()["timeline"]["spans"][-1]
    assert (wait["kind"], wait["name"], wait["state"], wait["end"]) == (
        "wait",
        "order.shipped",
        "waiting",
        None,
    )
    assert wait["due"] - wait["start"] == 7 * 86400
    received = dash.client.get(f"/api/runs/{dash.ids['shipped']}").json()["timeline"]["spans"][-1]
    assert received["state"] == "received"
    assert received["detail"]["event"]["data"] == {"order": "o-1", "carrier": "post"}
    assert dash.client.get("/api/runs/no/such/run").status_code == 404


def test_cancel_stops_a_suspended_run(dash: Dashboard) -> None:
    run_id = dash.ids["suspended"]
    response = dash.client.post(f"/api/runs/{run_id}/cancel", json={})
    assert response.status_code == 200, response.text
    assert response.json()["run"]["cancel_requested"] is True
    dash.call(dash.env.idle)
    assert dash.status(run_id) == "cancelled"
    assert dash.journal(run_id)[-1].kind == "workflow_cancelled"
    again = dash.client.post(f"/api/runs/{run_id}/cancel", headers=JSON)
    assert again.status_code == 409 and "nothing to cancel" in again.json()["error"]
    assert dash.status(dash.ids["other_suspended"]) == "suspended"


def test_retry_resumes_a_parked_run_and_continues_a_failed_one_as_a_new_run(dash: Dashboard) -> None:
    run_id = dash.ids["parked"]
    assert dash.status(run_id) == "failed"
    response = dash.client.post(f"/api/runs/{run_id}/retry", headers=JSON)
    assert response.status_code == 200, response.text
    assert response.json()["run"]["status"] == "pending"
    dash.call(dash.env.advance, timedelta(hours=1))
    assert dash.status(run_id) == "completed"  # replayed on the fixed code
    failed = dash.ids["failed"]
    final = dash.client.post(f"/api/runs/{failed}/retry", json={})
    assert final.status_code == 200, final.text
    assert final.json()["run"]["run_id"] == f"{failed}-retry-1"  # its journal is final: a new run goes on
    assert dash.status(failed) == "failed"
    before = dash.snapshot()
    done = dash.client.post(f"/api/runs/{run_id}/retry", json={})
    assert done.status_code == 409 and "only a failed run can be retried" in done.json()["error"]
    assert dash.snapshot() == before


def test_fork_starts_a_new_run_from_a_step_and_leaves_the_old_one(dash: Dashboard) -> None:
    source = dash.ids["completed"]
    before = dash.journal(source)
    response = dash.client.post(f"/api/runs/{source}/fork", json={"from_step": 2, "run_id": "forked"})
    assert response.status_code == 200, response.text
    assert response.json()["run"]["run_id"] == "forked"
    dash.call(dash.env.idle)
    assert dash.status("forked") == "completed"
    journal = dash.journal("forked")
    assert journal[0].data["forked_from"] == {"run_id": source, "step": 2}
    assert dash.journal(source) == before
    taken = dash.client.post(f"/api/runs/{source}/fork", json={"from_step": 1, "run_id": "forked"})
    assert taken.status_code == 422 and "forked" in taken.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"", 400, "needs a JSON object"),
        (b"{}", 422, "from_step must be an integer"),
        (b'{"from_step": 0}', 422, "from_step must be an integer"),
        (b'{"from_step": "2"}', 422, "from_step must be an integer"),
        (b'{"from_step": true}', 422, "from_step must be an integer"),
        (b'{"from_step": 1, "run_id": 3}', 422, "run_id must be a non-empty string"),
        (b'{"from_step": 1, "at": 3}', 422, "unknown fields ['at']"),
        (b'{"from_step": 9}', 422, "from_step must be between 1 and 2"),
    ],
)
def test_a_bad_fork_is_refused_and_starts_nothing(
    dash: Dashboard, body: bytes, status: int, says: str
) -> None:
    before = dash.snapshot()
    response = dash.client.post(f"/api/runs/{dash.ids['failed']}/fork", content=body, headers=JSON)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]
    assert dash.snapshot() == before
    assert dash.client.post("/api/runs/nope/fork", json={"from_step": 1}).status_code == 404


def test_an_event_sent_through_the_api_wakes_its_run(dash: Dashboard) -> None:
    response = dash.client.post(
        "/api/events", json={"name": "order.shipped", "data": {"order": "o-3"}, "id": "ship-o-3"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"id": "ship-o-3", "name": "order.shipped"}
    dash.call(dash.env.idle)
    assert dash.status(dash.ids["other_suspended"]) == "completed"
    assert dash.status(dash.ids["suspended"]) == "suspended"


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/api/events", b"{not json", 400, "not valid JSON"),
        ("/api/events", b"", 400, "needs a JSON object"),
        ("/api/events", b"[1, 2]", 422, "must be a JSON object"),
        ("/api/events", b'{"data": {}}', 422, "name must be a non-empty string"),
        ("/api/events", b'{"name": ""}', 422, "name must be a non-empty string"),
        ("/api/events", b'{"name": "x", "data": [1]}', 422, "data must be a JSON object"),
        ("/api/events", b'{"name": "x", "id": 5}', 422, "id must be a non-empty string"),
        ("/api/events", b'{"name": "x", "colour": "red"}', 422, "unknown fields ['colour']"),
        ("/api/runs/fulfil-o-2/cancel", b"{oops", 400, "not valid JSON"),
        ("/api/runs/audit-a-1/retry", b'"yes"', 422, "must be a JSON object"),
        ("/api/runs/nope/cancel", b"{}", 404, "no run with id 'nope'"),
        ("/api/runs/nope/retry", b"{}", 404, "no run with id 'nope'"),
    ],
)
def test_a_bad_request_gets_a_clear_4xx_and_changes_nothing(
    dash: Dashboard, path: str, body: bytes, status: int, says: str
) -> None:
    before = dash.snapshot()
    response = dash.client.post(path, content=body, headers=JSON)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]
    dash.call(dash.env.idle)
    assert dash.snapshot() == before


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ({"status": "exploded"}, "status must be one of"),
        ({"limit": "lots"}, "limit must be an integer"),
        ({"limit": "0"}, "limit must be an integer from 1 to 1000"),
        ({"limit": "100000"}, "limit must be an integer from 1 to 1000"),
    ],
)
def test_bad_filters_are_refused(dash: Dashboard, query: dict[str, str], says: str) -> None:
    response = dash.client.get("/api/runs", params=query)
    assert response.status_code == 400 and says in response.json()["error"]


def test_unknown_paths_and_methods_answer_json(dash: Dashboard) -> None:
    missing = dash.client.get("/api/nothing-here")
    assert missing.status_code == 404 and "nothing at /api/nothing-here" in missing.json()["error"]
    wrong = dash.client.delete("/api/events")
    assert wrong.status_code == 405 and "DELETE" in wrong.json()["error"]


def test_a_post_that_is_not_json_or_from_another_origin_is_refused(dash: Dashboard) -> None:
    before = dash.snapshot()
    form = dash.client.post(f"/api/runs/{dash.ids['suspended']}/cancel", data={"a": "b"})
    assert form.status_code == 415
    other = dash.client.post(
        f"/api/runs/{dash.ids['suspended']}/cancel", json={}, headers={"origin": "http://evil.example"}
    )
    assert other.status_code == 403 and "cross-origin" in other.json()["error"]
    same = {"origin": "http://127.0.0.1"}
    assert dash.client.post("/api/events", json={"name": "x"}, headers=same).status_code == 200
    assert dash.snapshot() == before  # an event nobody waits for changes no run


def test_without_a_token_only_loopback_names_are_answered(dash: Dashboard) -> None:
    for host in ("127.0.0.1:8000", "localhost", "[::1]:8000", "127.0.0.2"):
        assert dash.client.get("/api/runs", headers={"host": host}).status_code == 200, host
    rebound = dash.client.get("/api/runs", headers={"host": "attacker.example"})
    assert rebound.status_code == 403 and "give it a token" in rebound.json()["error"]


def test_the_openapi_document_describes_every_route(dash: Dashboard) -> None:
    document = dash.client.get("/api/openapi.json").json()
    assert document["openapi"].startswith("3.")
    described = {(path, method) for path, ops in document["paths"].items() for method in ops}
    routes = {
        (route.path.replace(":path}", "}"), method.lower())
        for route in create_app(app).routes
        if isinstance(route, Route) and route.path.startswith("/api/")
        for method in route.methods or ()
        if method != "HEAD"
    }
    assert routes, "no API routes found"
    assert routes == described
    for ops in document["paths"].values():
        for op in ops.values():
            assert op["summary"] and "200" in op["responses"]


def test_the_page_and_its_files_are_served(dash: Dashboard) -> None:
    page = dash.client.get("/")
    assert page.status_code == 200 and '<base href="/">' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        assert dash.client.get(f"/static/{name}").status_code == 200


# -- the token ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {TOKEN}"}, {"cookie": "x=y"}],
    ids=["none", "wrong", "not-bearer", "other-cookie"],
)
def test_without_the_token_every_request_is_refused_and_nothing_changes(
    locked: Dashboard, headers: dict[str, str]
) -> None:
    before = locked.snapshot()
    client = locked.client
    attempts: list[tuple[str, str, Any]] = [
        ("GET", "/", None),
        ("GET", "/static/app.js", None),
        ("GET", "/api/runs", None),
        ("GET", f"/api/runs/{locked.ids['failed']}", None),
        ("GET", "/api/openapi.json", None),
        ("POST", f"/api/runs/{locked.ids['suspended']}/cancel", {}),
        ("POST", f"/api/runs/{locked.ids['parked']}/retry", {}),
        ("POST", "/api/events", {"name": "order.shipped", "data": {"order": "o-2"}}),
        ("GET", "/?token=wrong", None),
        ("GET", "/api/runs?token=" + TOKEN, None),  # a query token is for the first page load only
    ]
    for method, path, body in attempts:
        response = client.request(method, path, json=body, headers=headers, follow_redirects=False)
        assert response.status_code == 401, (method, path, response.status_code)
        assert "needs its token" in response.json()["error"]
        assert response.headers["www-authenticate"] == "Bearer"
    locked.call(locked.env.idle)
    assert locked.snapshot() == before


def test_the_token_works_as_a_bearer_header_or_as_the_cookie_of_a_first_page_load(locked: Dashboard) -> None:
    client = locked.client
    bearer = {"authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/runs", headers=bearer).status_code == 200
    cancel = client.post(f"/api/runs/{locked.ids['suspended']}/cancel", json={}, headers=bearer)
    assert cancel.status_code == 200
    first = client.get(f"/?token={TOKEN}&x=1", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/?x=1"  # the token leaves the URL
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    # The client now holds the cookie, as a browser would.
    assert client.get("/").status_code == 200
    assert client.get(f"/api/runs/{locked.ids['failed']}").status_code == 200
    assert (
        client.post("/api/events", json={"name": "order.shipped", "data": {"order": "o-3"}}).status_code
        == 200
    )
    locked.call(locked.env.idle)
    assert locked.status(locked.ids["other_suspended"]) == "completed"


def test_a_token_dashboard_answers_on_any_host_name(locked: Dashboard) -> None:
    headers = {"host": "replay.internal", "authorization": f"Bearer {TOKEN}"}
    assert locked.client.get("/api/runs", headers=headers).status_code == 200


def test_an_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        create_app(app, token=" ")


def test_the_dashboard_works_on_a_sqlite_store(tmp_path: Any) -> None:
    from starlette.testclient import TestClient

    local = replay.App("sqlite-shop", store=f"sqlite:///{tmp_path}/replay.db")

    @local.workflow()
    async def wait_for_parcel(ctx: replay.Context, order: str) -> None:
        await ctx.wait_for_event("order.shipped", match={"order": order})

    async def start() -> str:
        return (await local.start(wait_for_parcel, "o-9", run_id="o-9")).run_id

    # No worker: the run stays pending, and the dashboard reads and acts on the file.
    with TestClient(create_app(local), base_url="http://127.0.0.1") as client:
        assert client.portal is not None
        run_id = client.portal.call(start)
        assert client.get("/api/runs").json()["counts"]["pending"] == 1
        assert client.post(f"/api/runs/{run_id}/cancel", json={}).json()["run"]["cancel_requested"]
        assert client.get(f"/api/runs/{run_id}").json()["journal"][0]["kind"] == "workflow_started"
        client.portal.call(local.close)
