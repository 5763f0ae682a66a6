"""Logins: flag parsing, the access guard over every route (UI, Gradio internals, API, docs), sessions,
and what signed-in users may do to each other's jobs."""
from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import replace

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from starlette.routing import Mount
from starlette.websockets import WebSocketDisconnect

from app import build_app
from webui.auth import COOKIE_NAME, Accounts, Sessions, Surface, safe_next
from webui.jobs.queue import JobState
from webui.settings import parse_credentials, settings_from_args

PASSWORD = "s3cret:with:colons"
ALICE = ("alice", PASSWORD)
BOB = ("bob", "hunter2")
ROOT = ("root", "toor-pw")
FAST = {"prompt": "a red circle", "steps": 2, "seed": 1234, "width": 64, "height": 64}
# Gradio routes that stream until the client leaves; the anonymous pass still covers them.
STREAMING = re.compile(r"/gradio_api/(heartbeat|queue/data|dev/reload|call/|stream/)")


def secured(easel, ui: dict | None = None, api: dict | None = None, admins: tuple = (), webui: bool = True):
    easel.manager.preferred = "tiny-a.safetensors"
    ui = dict([ALICE, BOB, ROOT]) if ui is None else ui
    settings = replace(easel.settings, api=True, nowebui=not webui, ui_credentials=ui,
                       api_credentials=api or {}, admin_users=admins)
    return build_app(easel, settings)


def every_route(app) -> list[tuple[str, str]]:
    """(method, concrete path) for every route of the app, Gradio's mounted ones included."""
    found = []

    def walk(routes, prefix: str) -> None:
        for ctx in iter_route_contexts(routes):
            route = ctx.original_route
            if isinstance(route, Mount):
                walk(route.routes, prefix + route.path)
                continue
            path = re.sub(r"\{[^}]+\}", "x", prefix + (ctx.path or ""))
            for method in sorted(ctx.methods or {"GET"}):
                found.append((method, path))

    walk(app.routes, "")
    return sorted(set(found))


# -- flags -------------------------------------------------------------------------------------------


def test_credentials_split_at_the_first_colon():
    assert parse_credentials("alice:s3cret:with:colons, bob:x", "--gradio-auth") == {
        "alice": "s3cret:with:colons", "bob": "x"}
    for bad in ("alice", "alice:", ":pw", "alice:a,alice:b"):
        with pytest.raises(ValueError) as err:
            parse_credentials(bad, "--gradio-auth")
        assert "--gradio-auth" in str(err.value) and "pw" not in str(err.value).replace("--", "")


def test_flags_files_and_admin_defaults(tmp_path):
    logins = tmp_path / "logins.txt"
    logins.write_text("carol:c:1\n\ndave:d2, erin:e3\n", encoding="utf-8")
    s = settings_from_args(["--data-dir", str(tmp_path), "--gradio-auth", "alice:a", "--gradio-auth-path", str(logins)])
    assert s.ui_credentials == {"alice": "a", "carol": "c:1", "dave": "d2", "erin": "e3"}
    accounts = Accounts.from_settings(s)
    assert accounts.api == accounts.ui  # --gradio-auth alone protects the API too
    assert accounts.admins == {"alice"}  # the first login is the admin unless --admin-users says otherwise
    assert s.cmd_flags["gradio_auth"] == "<hidden>" and s.cmd_flags["gradio_auth_path"] == "<hidden>"
    assert "alice:a" not in repr(s)

    s = settings_from_args(["--data-dir", str(tmp_path), "--api-auth", "bot:b", "--admin-users", "bot", "--nowebui"])
    assert Accounts.from_settings(s).ui == {"bot": "b"} and s.port == 7861 and s.api
    with pytest.raises(SystemExit):
        settings_from_args(["--data-dir", str(tmp_path), "--admin-users", "nobody"])
    with pytest.raises(SystemExit):
        settings_from_args(["--data-dir", str(tmp_path), "--gradio-auth-path", str(tmp_path / "missing")])


def test_sessions_are_signed_expire_and_can_be_revoked():
    sessions = Sessions(max_age=60)
    token = sessions.issue("alice")
    assert sessions.verify(token) == "alice"
    payload, _, signature = token.rpartition(".")
    assert sessions.verify(payload + "." + signature[::-1]) is None  # a damaged signature
    forged = Sessions(max_age=60)  # another key makes a well-formed token for a user it names
    assert sessions.verify(forged.issue("root")) is None
    assert sessions.verify(token, now=time.time() + 120) is None  # past the session's own expiry
    assert sessions.verify(token) is None  # ... and an expired session is forgotten
    fresh = sessions.issue("alice")
    other = sessions.issue("alice")  # a second browser of the same user
    sessions.revoke(fresh)
    assert sessions.verify(fresh) is None and sessions.verify(other) == "alice"
    for junk in ("", "a.b", "a.b.c.d", "!!.1.2"):
        assert sessions.verify(junk) is None


def test_password_check_is_exact():
    accounts = Accounts(ui={"alice": PASSWORD})
    assert accounts.check(Surface.UI, "alice", PASSWORD)
    for user, password in (("alice", "s3cret"), ("alice", PASSWORD + " "), ("Alice", PASSWORD), ("bob", PASSWORD)):
        assert not accounts.check(Surface.UI, user, password)
    assert not accounts.check(Surface.API, "alice", PASSWORD)  # no API logins in this Accounts


def test_next_only_stays_on_this_site():
    assert safe_next("/docs?x=1") == "/docs?x=1"
    for target in ("//evil.example/x", "https://evil.example", "/\\evil.example", "", None, "javascript:alert(1)"):
        assert safe_next(target) == "/"


# -- the guard over every route -----------------------------------------------------------------------


def test_every_route_refuses_anonymous_requests_and_accepts_a_login(easel):
    app = secured(easel)
    routes = every_route(app)
    paths = {p for _, p in routes}
    assert {"/", "/config", "/gradio_api/queue/join", "/gradio_api/upload", "/sdapi/v1/txt2img", "/docs",
            "/openapi.json", "/easel/v1/jobs/x"} <= paths
    assert len(routes) > 80
    routes += [("GET", "/no-such-page"), ("POST", "/gradio_api/no-such"), ("GET", "/sdapi/v1/no-such"),
               ("GET", "/gradio_api/file=/etc/passwd")]
    routes = [(m, p) for m, p in routes if p not in ("/login", "/logout")]  # the guard's own sign-in page
    with TestClient(app, follow_redirects=False) as client:
        for method, path in routes:
            r = client.request(method, path)
            assert r.status_code == 401, (method, path, r.status_code)
            assert r.headers["www-authenticate"].startswith("Basic")
            if method == "GET":
                page = client.get(path, headers={"accept": "text/html"})
                assert page.status_code in (303, 401), (path, page.status_code)
                if page.status_code == 303:
                    assert page.headers["location"].startswith("/login?next=")
        for method, path in routes:
            if STREAMING.search(path):
                continue
            r = client.request(method, path, auth=ALICE, json={} if method == "POST" else None)
            refused = 'realm="Easel"' in r.headers.get("www-authenticate", "")  # (Gradio's own 401s are not)
            assert not refused and not r.headers.get("location", "").startswith("/login"), (method, path)
            assert PASSWORD not in r.text and "toor-pw" not in r.text and "hunter2" not in r.text, (method, path)
        for n, (method, path) in enumerate(routes[::15]):  # wrong passwords cost half a second each: a sample
            code = client.request(method, path, auth=("alice", "wrong")).status_code
            assert code == (401 if n < 5 else 429), (method, path, n)  # 5 failures lock the account
        with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect("/gradio_api/anything") as ws:
            ws.receive_text()
        assert closed.value.code == 1008


def test_the_login_form_opens_the_ui_with_a_session_cookie(easel):
    with TestClient(secured(easel), follow_redirects=False) as client:
        r = client.get("/", headers={"accept": "text/html"})
        assert r.status_code == 303 and r.headers["location"] == "/login?next=%2F"
        form = client.get("/login?next=%2Fdocs")
        assert form.status_code == 200 and 'name="password"' in form.text and 'value="/docs"' in form.text
        wrong = client.post("/login", data={"username": "alice", "password": "nope", "next": "/"})
        assert wrong.status_code == 401 and COOKIE_NAME not in wrong.headers.get("set-cookie", "")
        assert "Wrong user name or password" in wrong.text and "nope" not in wrong.text
        evil = client.post("/login", data={"username": "alice", "password": PASSWORD, "next": "//evil.example"})
        assert evil.status_code == 303 and evil.headers["location"] == "/"
        ok = client.post("/login", data={"username": "alice", "password": PASSWORD, "next": "/docs"})
        assert ok.status_code == 303 and ok.headers["location"] == "/docs"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "samesite=lax" in cookie.lower() and PASSWORD not in cookie
        assert client.get("/").status_code == 200
        assert client.get("/gradio_api/user").json() == "alice"  # Gradio events are attributed to alice
        assert client.get("/config").status_code == 200
        assert client.get("/docs").status_code == 200
        assert client.get("/sdapi/v1/options").status_code == 200
        copy = {"cookie": f"{COOKIE_NAME}={client.cookies.get(COOKIE_NAME)}"}  # someone keeps a copy...
        client.cookies.clear()
        assert client.get("/config", headers=copy).status_code == 200
        out = client.get("/logout", headers=copy)
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert client.get("/config").status_code == 401
        # ...signing out ended the session on the server: the copy opens nothing any more
        assert client.get("/config", headers=copy).status_code == 401
        assert client.get("/sdapi/v1/options", headers=copy).status_code == 401


def test_api_logins_and_ui_logins_are_separate_when_both_are_given(easel):
    app = secured(easel, ui={"alice": PASSWORD}, api={"bot": "b0t"}, webui=True)
    with TestClient(app, follow_redirects=False) as client:
        assert client.get("/sdapi/v1/options", auth=("bot", "b0t")).status_code == 200
        assert client.get("/sdapi/v1/options", auth=ALICE).status_code == 401
        assert client.get("/config", auth=ALICE).status_code == 200
        assert client.get("/config", auth=("bot", "b0t")).status_code == 401


def test_no_response_contains_a_password(easel):
    with TestClient(secured(easel, webui=False)) as client:
        texts = [client.get(p, auth=ALICE).text for p in
                 ("/sdapi/v1/cmd-flags", "/sdapi/v1/options", "/openapi.json", "/sdapi/v1/progress", "/easel/v1/jobs")]
        texts.append(client.post("/sdapi/v1/txt2img", auth=ALICE, json=FAST).text)
        texts.append(client.post("/login", data={"username": "alice", "password": PASSWORD + "x"}).text)
        for text in texts:
            assert PASSWORD not in text and "hunter2" not in text and "toor-pw" not in text
        flags = client.get("/sdapi/v1/cmd-flags", auth=ALICE).json()
        assert flags["gradio_auth"] is None  # given through settings here, never echoed either way


# -- users and their jobs -----------------------------------------------------------------------------


def test_two_users_with_different_checkpoints_each_get_their_own_model(easel):
    with TestClient(secured(easel, webui=False)) as client:
        answers: dict[str, dict] = {}

        def generate(who, checkpoint):
            overrides = {"sd_model_checkpoint": checkpoint}
            r = client.post("/sdapi/v1/txt2img", auth=who, json={**FAST, "n_iter": 2, "override_settings": overrides})
            answers[who[0]] = r.json()

        threads = [threading.Thread(target=generate, args=(ALICE, "tiny-a.safetensors")),
                   threading.Thread(target=generate, args=(BOB, "tiny-b.safetensors"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for user, model in (("alice", "tiny-a"), ("bob", "tiny-b")):
            info = json.loads(answers[user]["info"])
            assert info["sd_model_name"] == model
            assert all(f"Model: {model}," in text for text in info["infotexts"]) and len(info["infotexts"]) == 2
        assert {j.owner for j in easel.queue.jobs_of("alice")} == {"alice"}
        assert len(easel.queue.jobs_of("bob")) == 1


def test_a_user_cannot_interrupt_another_users_job_but_an_admin_can(easel):
    with TestClient(secured(easel, webui=False, admins=("root",))) as client:
        job_id = client.post("/easel/v1/jobs", auth=BOB, json={**FAST, "steps": 20}).json()["id"]
        job = easel.queue.get(job_id)
        while not (job.state is JobState.RUNNING and job.step >= 1):
            assert not job.done
            time.sleep(0.01)
        assert client.post("/sdapi/v1/interrupt", auth=ALICE).json() == {"interrupted": []}
        assert client.post("/sdapi/v1/skip", auth=ALICE).json() == {"interrupted": []}
        assert client.post(f"/easel/v1/jobs/{job_id}/interrupt", auth=ALICE).status_code == 404
        assert client.get(f"/easel/v1/jobs/{job_id}", auth=ALICE).status_code == 404
        assert job.wait(60) and job.state is JobState.DONE and not job.interrupted
        assert len(client.get(f"/easel/v1/jobs/{job_id}", auth=BOB).json()["images"]) == 1

        job_id = client.post("/easel/v1/jobs", auth=BOB, json={**FAST, "steps": 60}).json()["id"]
        job = easel.queue.get(job_id)
        while not (job.state is JobState.RUNNING and job.step >= 1):
            time.sleep(0.01)
        assert client.get(f"/easel/v1/jobs/{job_id}", auth=ROOT).json()["owner"] == "bob"
        assert client.post(f"/easel/v1/jobs/{job_id}/interrupt", auth=ROOT).status_code == 200
        assert job.wait(60) and job.state is JobState.INTERRUPTED
