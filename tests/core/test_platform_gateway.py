"""The HTTP platform gateway against a local operator endpoint that checks what it gets."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from api.app import create_app
from core.platform import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    ActionRefused,
    HttpPlatform,
    PlatformUnavailable,
    sign,
    signature_is_valid,
)
from core.temporal import build_worker
from tests.api.test_withdrawal_slice import decide, submit, wait_for_status
from tests.conftest import AUDIT_KEY, Tokens
from workflows.contracts import ExecuteInput

SECRET = b"operator-shared-secret-0123456789abcdef"


@dataclass
class Operator:
    """The operator's endpoint: verifies signatures, deduplicates on the idempotency key."""

    script: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    executed: dict[str, dict[str, Any]] = field(default_factory=dict)

    def answer(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        self.calls.append({"headers": headers, "body": json.loads(body)})
        if not signature_is_valid(
            SECRET, headers.get(TIMESTAMP_HEADER, ""), body, headers.get(SIGNATURE_HEADER, "")
        ):
            return 401, {"detail": "bad signature"}
        if self.script:
            return self.script.pop(0)
        key = headers[IDEMPOTENCY_HEADER]
        if key not in self.executed:
            target = json.loads(body)["target"]
            self.executed[key] = {
                "summary": f"Operator paid {target}",
                "before": {"id": target, "status": "pending"},
                "after": {"id": target, "status": "paid"},
            }
        return 200, self.executed[key]


@pytest.fixture
def operator() -> Iterator[tuple[Operator, str]]:
    state = Operator()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status, payload = state.answer(dict(self.headers.items()), body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/backoffice/actions"
    finally:
        server.shutdown()
        server.server_close()


def command(target: str = "PAY-1") -> ExecuteInput:
    return ExecuteInput(str(uuid.uuid4()), "payment.withdrawal", target, {"amount": "10.00"})


def test_signed_request_carries_the_idempotency_key(operator):
    state, url = operator
    sent = command()
    result = HttpPlatform(url, SECRET).execute(sent)
    assert result.summary == "Operator paid PAY-1" and result.after["status"] == "paid"
    (call,) = state.calls
    assert call["headers"][IDEMPOTENCY_HEADER] == sent.request_id
    assert call["headers"][SIGNATURE_HEADER].startswith("v1=")
    assert call["body"] == {
        "request_id": sent.request_id,
        "phase": "apply",
        "action": "payment.withdrawal",
        "target": "PAY-1",
        "params": {"amount": "10.00"},
    }


def test_a_revert_is_signed_with_its_own_idempotency_key(operator):
    state, url = operator
    sent = ExecuteInput(str(uuid.uuid4()), "player.vip_change", "PLR-1", {"vip_tier": "gold"})
    HttpPlatform(url, SECRET).execute(sent)
    HttpPlatform(url, SECRET).revert(sent)  # the operator checks the signature of each
    apply_call, revert_call = state.calls
    assert apply_call["headers"][IDEMPOTENCY_HEADER] == sent.request_id
    assert revert_call["headers"][IDEMPOTENCY_HEADER] == f"{sent.request_id}:revert"
    assert revert_call["body"]["phase"] == "revert"
    assert len(state.executed) == 2, "the revert was deduplicated against the apply"


def test_server_errors_are_retried_with_the_same_key(operator):
    state, url = operator
    state.script = [(503, {"detail": "maintenance"}), (429, {"detail": "slow down"})]
    sent = command()
    result = HttpPlatform(url, SECRET, backoff=0.01).execute(sent)
    assert result.summary == "Operator paid PAY-1"
    assert len(state.calls) == 3
    assert {c["headers"][IDEMPOTENCY_HEADER] for c in state.calls} == {sent.request_id}


def test_business_refusal_is_not_retried(operator):
    state, url = operator
    state.script = [(409, {"detail": "account closed"})]
    with pytest.raises(ActionRefused, match="HTTP 409 account closed"):
        HttpPlatform(url, SECRET, backoff=0.01).execute(command())
    assert len(state.calls) == 1


def test_wrong_secret_is_refused_by_the_operator(operator):
    state, url = operator
    with pytest.raises(ActionRefused, match="401 bad signature"):
        HttpPlatform(url, b"not-the-secret", backoff=0.01).execute(command())
    assert state.executed == {}


def test_unreachable_platform_is_retryable_not_refused():
    platform = HttpPlatform("http://127.0.0.1:9/none", SECRET, attempts=2, backoff=0.01)
    with pytest.raises(PlatformUnavailable, match="after 2 attempts"):
        platform.execute(command())


def test_signature_check_rejects_stale_and_altered_messages():
    stamp = str(int(time.time()))
    signature = sign(SECRET, stamp, b"{}")
    assert signature_is_valid(SECRET, stamp, b"{}", signature)
    assert not signature_is_valid(SECRET, stamp, b'{"x":1}', signature)
    assert not signature_is_valid(SECRET, str(int(time.time()) - 3600), b"{}", signature)
    assert not signature_is_valid(SECRET, "not-a-time", b"{}", signature)


async def test_approved_withdrawal_is_executed_once_by_the_operator(
    operator, runtime, temporal_client, sessions, new_withdrawal
):
    state, url = operator
    queue = f"operator-{uuid.uuid4()}"
    platform = HttpPlatform(url, SECRET, backoff=0.01)
    worker = build_worker(temporal_client, sessions, queue, AUDIT_KEY, platform_gateway=platform)
    app = create_app(dataclasses.replace(runtime, task_queue=queue))
    async with (
        worker,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://op") as api,
    ):
        tokens = Tokens(api, {})
        request = (await submit(api, tokens, new_withdrawal("640.00"))).json()
        await decide(api, tokens, "fin.manager", request["id"])
        done = await wait_for_status(api, tokens, request["id"], "executed")
    assert done["outcome"] == f"Operator paid {request['target']}"
    assert list(state.executed) == [request["id"]]
