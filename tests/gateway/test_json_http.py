"""JSON over HTTP: curl-style requests through the real Envoy's gRPC-JSON transcoder.

One real stack for the module (every service, the rate limiter and Envoy on free ports,
the embedded default in a temporary directory, one TLS_DIR for every process), reached only
through the gateway with plain HTTP/1.1 JSON requests, as `curl` would send them. Every
method with a google.api.http rule is called at least once (a test checks the list against
the descriptors).
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from google.api import annotations_pb2
from openapi_schema_validator import OAS30Validator, oas30_format_checker

from examples.demo import demo_environment
from runtime import VERSION
from runtime.config import Settings
from runtime.protos import API_MODULES
from runtime.stack import Stack
from tests.command_line.conftest import PASSPHRASE, UNLOCKS_PER_MINUTE, raised_rules

pytestmark = pytest.mark.envoy

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "documents"
OPENAPI = yaml.safe_load((REPO / "docs" / "openapi.yaml").read_text(encoding="utf-8"))
# gRPC methods this module called over JSON, by "Service/Method".
CALLED: set[str] = set()


def http_rules() -> dict[str, tuple[str, str]]:
    """Every public method with a google.api.http rule: "Service/Method" → (verb, path)."""
    rules = {}
    for module in API_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if options.HasExtension(annotations_pb2.http):
                    rule = options.Extensions[annotations_pb2.http]
                    verb = rule.WhichOneof("pattern")
                    rules[f"{service.name}/{method.name}"] = (verb, getattr(rule, verb))
    return rules


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Settings]:
    work = tmp_path_factory.mktemp("json-http")
    env = demo_environment(work / "var")
    env.update(
        RATELIMIT_RULES=str(raised_rules(work)),
        ARGON2_MEMORY_KIB="8192",
        ARGON2_TIME_COST="1",
    )
    with pytest.MonkeyPatch.context() as patch:
        for key in set(os.environ) - set(env):
            patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        settings = Settings()
    with Stack(settings, env, log=work / "stack.log") as running:
        yield settings
        dead = running.failed()
        assert dead is None, f"{dead.name} died during the tests; see {work / 'stack.log'}"


def assert_documented(method: str, status: int, body) -> None:
    """`body` is what docs/openapi.yaml says `method` answers with `status`."""
    verb, path = http_rules()[method]
    responses = OPENAPI["paths"][path][verb]["responses"]
    schema = responses["200" if status == 200 else "default"]["content"]["application/json"]
    validator = OAS30Validator(
        {**schema["schema"], "components": OPENAPI["components"]},
        format_checker=oas30_format_checker,
    )
    validator.validate(body)


class Api:
    """An HTTP/1.1 JSON client of the gateway that records which method each call reached
    and checks every answer against the OpenAPI document."""

    def __init__(self, base_url: str, source: str = "127.0.0.1") -> None:
        transport = httpx.HTTPTransport(local_address=source)
        self.client = httpx.Client(base_url=base_url, transport=transport, timeout=60)

    def call(self, method: str, verb: str, path: str, **kwargs) -> httpx.Response:
        # UNAVAILABLE (503) is the gateway failing fast while a busy service misses its
        # health checks (2 shared cores): retried, as a client should, for a bounded time.
        deadline = time.monotonic() + 60
        response = self.client.request(verb, path, **kwargs)
        while response.status_code == 503 and time.monotonic() < deadline:
            time.sleep(1)
            response = self.client.request(verb, path, **kwargs)
        CALLED.add(method)
        content_type = response.headers.get("content-type", "")
        assert content_type.startswith("application/json"), (response, response.text[:300])
        assert_documented(method, response.status_code, response.json())
        return response

    def ok(self, method: str, verb: str, path: str, **kwargs) -> dict:
        response = self.call(method, verb, path, **kwargs)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()


@pytest.fixture(scope="module")
def api(stack) -> Iterator[Api]:
    api = Api(f"http://127.0.0.1:{stack.gateway_port}")
    yield api
    api.client.close()


@pytest.fixture(scope="module")
def project(api) -> dict:
    created = api.ok(
        "ProjectService/CreateProject",
        "POST",
        "/v1/projects",
        json={"name": "JSON over HTTP", "description": "curl", "passphrase": PASSPHRASE},
    )
    project = created["project"]
    unlocked = api.ok(
        "ProjectService/UnlockProject",
        "POST",
        f"/v1/projects/{project['id']}:unlock",
        json={"passphrase": PASSPHRASE},
    )
    return {**project, "token": unlocked["unlockToken"]}


def test_every_public_method_has_a_resource_style_rule():
    rules = http_rules()
    public = {
        f"{service.name}/{method.name}"
        for module in API_MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert set(rules) == public
    assert rules["ProjectService/CreateProject"] == ("post", "/v1/projects")
    assert rules["ProjectService/UnlockProject"] == ("post", "/v1/projects/{project_id}:unlock")
    assert rules["IngestService/IngestDocument"] == ("post", "/v1/projects/{project_id}/documents")
    assert rules["IngestService/ListDocuments"] == ("get", "/v1/projects/{project_id}/documents")
    assert rules["QueryService/Query"] == ("post", "/v1/projects/{project_id}:query")
    assert len(set(rules.values())) == len(rules)  # no two methods share a route


def test_projects_metadata_and_lifecycle(api, project):
    pid = project["id"]
    assert project["name"] == "JSON over HTTP"
    assert project["state"] == "STATE_ACTIVE"
    assert base64.b64decode(project["publicKey"])  # bytes fields are base64 in JSON
    got = api.ok("ProjectService/GetProject", "GET", f"/v1/projects/{pid}")
    assert got["project"]["id"] == pid
    listed = api.ok("ProjectService/ListProjects", "GET", "/v1/projects", params={"pageSize": 100})
    assert pid in [p["id"] for p in listed["projects"]]
    updated = api.ok(
        "ProjectService/UpdateProject",
        "PATCH",
        f"/v1/projects/{pid}",
        headers={"x-unlock-token": project["token"]},
        json={"project": {"description": "curl users"}, "updateMask": "description"},
    )
    assert updated["project"]["description"] == "curl users"
    assert updated["project"]["name"] == "JSON over HTTP"


def test_ingest_text_and_file_then_query(api, project):
    pid, headers = project["id"], {"x-unlock-token": project["token"]}
    text = api.ok(
        "IngestService/IngestDocument",
        "POST",
        f"/v1/projects/{pid}/documents",
        headers=headers,
        json={"text": {"title": "Note", "body": "Envoy transcodes JSON into gRPC calls."}},
    )["document"]
    assert text["status"] == "DOCUMENT_STATUS_COMPLETED", text
    content = (EXAMPLES / "gettysburg-address.txt").read_bytes()
    upload = api.ok(
        "IngestService/IngestDocument",
        "POST",
        f"/v1/projects/{pid}/documents",
        headers=headers,
        json={
            "file": {
                "filename": "gettysburg-address.txt",
                "content": base64.b64encode(content).decode(),
            }
        },
    )["document"]
    assert upload["status"] == "DOCUMENT_STATUS_COMPLETED", upload
    assert upload["sourceType"] == "SOURCE_TYPE_TEXT_FILE"
    assert int(upload["chunkCount"]) > 0  # int64 is a JSON string

    got = api.ok(
        "IngestService/GetDocument",
        "GET",
        f"/v1/projects/{pid}/documents/{upload['id']}",
        headers=headers,
    )
    assert got["document"]["title"] == upload["title"]
    listed = api.ok(
        "IngestService/ListDocuments",
        "GET",
        f"/v1/projects/{pid}/documents",
        headers=headers,
        params={"status": "DOCUMENT_STATUS_COMPLETED", "pageSize": 10},
    )
    assert {d["id"] for d in listed["documents"]} == {text["id"], upload["id"]}

    # A finished document's watch is one message: a JSON array of one.
    watched = api.ok(
        "IngestService/WatchDocument",
        "GET",
        f"/v1/projects/{pid}/documents/{upload['id']}:watch",
        headers=headers,
    )
    assert [m["document"]["status"] for m in watched] == ["DOCUMENT_STATUS_COMPLETED"]

    answer = api.ok(
        "QueryService/Query",
        "POST",
        f"/v1/projects/{pid}:query",
        headers=headers,
        json={"query": "government of the people, by the people", "topK": 3},
    )
    assert answer["passages"][0]["documentId"] == upload["id"]
    assert "people" in answer["passages"][0]["text"]

    stats = api.ok("ProjectService/GetProjectStats", "GET", f"/v1/projects/{pid}/stats")
    assert stats["stats"]["documentsCompleted"] == "2"
    reindexed = api.ok(
        "IngestService/ReindexProject",
        "POST",
        f"/v1/projects/{pid}:reindex",
        headers=headers,
        json={},
    )
    assert reindexed["documentsReindexed"] == "2"

    # Retrying a completed document is refused: FAILED_PRECONDITION is HTTP 400.
    retried = api.call(
        "IngestService/RetryDocument",
        "POST",
        f"/v1/projects/{pid}/documents/{text['id']}:retry",
        headers=headers,
        json={},
    )
    assert retried.status_code == 400, retried.text
    assert retried.json()["code"] == 9  # FAILED_PRECONDITION
    api.ok(
        "IngestService/DeleteDocument",
        "DELETE",
        f"/v1/projects/{pid}/documents/{text['id']}",
        headers=headers,
    )
    gone = api.client.get(f"/v1/projects/{pid}/documents/{text['id']}", headers=headers)
    assert gone.status_code == 404
    assert gone.json()["code"] == 5


def test_watch_streams_a_background_document_until_it_is_terminal(api, project):
    pid, headers = project["id"], {"x-unlock-token": project["token"]}
    queued = api.ok(
        "IngestService/IngestDocument",
        "POST",
        f"/v1/projects/{pid}/documents",
        headers=headers,
        json={
            "background": True,
            "text": {"title": "Queued", "body": "A background job, watched over HTTP."},
        },
    )["document"]
    assert queued["status"] == "DOCUMENT_STATUS_QUEUED"
    stream = api.ok(
        "IngestService/WatchDocument",
        "GET",
        f"/v1/projects/{pid}/documents/{queued['id']}:watch",
        headers=headers,
    )
    statuses = [message["document"]["status"] for message in stream]
    assert statuses[-1] == "DOCUMENT_STATUS_COMPLETED", statuses
    assert all(s != "DOCUMENT_STATUS_FAILED" for s in statuses)


def test_audit_chain(api, project):
    pid, headers = project["id"], {"x-unlock-token": project["token"]}
    events = api.ok(
        "CryptoService/ListAuditEvents", "GET", f"/v1/projects/{pid}/audit/events", headers=headers
    )["events"]
    assert events[0]["type"] == "AUDIT_EVENT_TYPE_PROJECT_CREATED"
    head = api.ok("CryptoService/GetAuditHead", "GET", f"/v1/projects/{pid}/audit/head")["head"]
    verified = api.ok(
        "CryptoService/VerifyAuditChain",
        "POST",
        f"/v1/projects/{pid}/audit:verify",
        json={"publicKey": project["publicKey"], "pinnedHead": head},
    )
    assert verified["valid"] is True
    assert int(verified["eventsVerified"]) >= int(head["seq"])


def test_export_streams_a_bundle_and_import_takes_one_as_a_json_array(api, project):
    pid, headers = project["id"], {"x-unlock-token": project["token"]}
    pieces = api.ok(
        "ProjectService/ExportProject", "GET", f"/v1/projects/{pid}:export", headers=headers
    )
    bundle = b"".join(base64.b64decode(piece["data"]) for piece in pieces)
    assert bundle.startswith(b"CCBUNDLE")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    # A client stream over JSON is an array of messages. The bundle is whole and this
    # deployment holds its project: ALREADY_EXISTS, HTTP 409; cut short, the caller's bad
    # input: INVALID_ARGUMENT naming `data`, HTTP 400 (DATA_LOSS would be a 500).
    again = api.call(
        "ProjectService/ImportProject",
        "POST",
        "/v1/projects:import",
        json=[{"passphrase": PASSPHRASE, "data": b64(bundle[:1000])}, {"data": b64(bundle[1000:])}],
    )
    assert again.status_code == 409, again.text
    assert again.json()["code"] == 6  # ALREADY_EXISTS
    cut = api.call(
        "ProjectService/ImportProject",
        "POST",
        "/v1/projects:import",
        json=[{"passphrase": PASSPHRASE, "data": b64(bundle[:-1])}],
    )
    assert cut.status_code == 400, cut.text
    assert cut.json()["code"] == 3, cut.text  # INVALID_ARGUMENT
    assert "Nothing was imported" in cut.json()["message"], cut.text


def test_crypto_primitives(api):
    salt = api.ok("CryptoService/GenerateSalt", "POST", "/v1/crypto:generateSalt", json={})
    assert len(base64.b64decode(salt["salt"])) == 16
    key = api.ok(
        "CryptoService/DeriveKey",
        "POST",
        "/v1/crypto:deriveKey",
        json={
            "passphrase": PASSPHRASE,
            "salt": salt["salt"],
            "params": {"timeCost": 1, "memoryKib": 8192, "parallelism": 1},
        },
    )["key"]
    message = base64.b64encode(b"attack at dawn").decode()
    sealed = api.ok(
        "CryptoService/Encrypt",
        "POST",
        "/v1/crypto:encrypt",
        json={"key": key, "plaintext": message},
    )
    opened = api.ok(
        "CryptoService/Decrypt",
        "POST",
        "/v1/crypto:decrypt",
        json={"key": key, "ciphertext": sealed["ciphertext"]},
    )
    assert opened["plaintext"] == message
    pair = api.ok("CryptoService/GenerateKeypair", "POST", "/v1/crypto:generateKeypair", json={})
    signature = api.ok(
        "CryptoService/Sign",
        "POST",
        "/v1/crypto:sign",
        json={"privateKey": pair["privateKey"], "message": message},
    )["signature"]
    checked = api.ok(
        "CryptoService/Verify",
        "POST",
        "/v1/crypto:verify",
        json={"publicKey": pair["publicKey"], "message": message, "signature": signature},
    )
    assert checked["valid"] is True
    digest = api.ok(
        "CryptoService/Hash",
        "POST",
        "/v1/crypto:hash",
        json={"algorithm": "HASH_ALGORITHM_SHA256", "data": message},
    )["digest"]
    assert base64.b64decode(digest) == hashlib.sha256(b"attack at dawn").digest()


@pytest.mark.parametrize("service", ["projects", "ingest", "query", "crypto"])
def test_detailed_status_of_every_service(api, stack, service):
    name = {"projects": "ProjectService"}.get(service, f"{service.title()}Service")
    status = api.ok(f"{name}/GetStatus", "GET", f"/v1/status/{service}")["status"]
    assert status["service"] == f"contextcache.v1.{name}"
    assert status["version"] == VERSION
    assert status["environment"] == stack.environment
    taken = datetime.fromisoformat(status["time"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - taken).total_seconds()) < 60
    assert status["state"] == "STATE_HEALTHY"
    checks = {check["name"]: check for check in status["checks"]}
    assert "database" in checks or "index" in checks
    # Monitoring is reported beside the dependencies (this stack has no SENTRY_DSN).
    assert checks["monitoring"]["type"] == "sentry"
    assert checks["monitoring"]["result"] == "RESULT_DISABLED"


@pytest.mark.parametrize("service", ["projects", "ingest", "query", "crypto"])
def test_every_service_answers_its_status_over_grpc_through_the_gateway(stack, service):
    """Native gRPC (HTTP/2) through the gateway reaches each service's own GetStatus."""
    module = importlib.import_module(f"contextcache.v1.{service}_pb2")
    name = {"projects": "ProjectService"}.get(service, f"{service.title()}Service")
    with grpc.insecure_channel(f"127.0.0.1:{stack.gateway_port}") as channel:
        call = channel.unary_unary(
            f"/contextcache.v1.{name}/GetStatus",
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=getattr(module, f"{name}GetStatusResponse").FromString,
        )
        status = call(getattr(module, f"{name}GetStatusRequest")(), timeout=30).status
    assert status.service == f"contextcache.v1.{name}"
    assert status.version == VERSION
    assert status.environment == stack.environment


def test_bad_input_is_a_400_naming_the_field(api):
    response = api.client.post("/v1/projects", json={"name": "x" * 201, "passphrase": "too short"})
    assert response.status_code == 400, response.text
    body = response.json()
    assert_documented("ProjectService/CreateProject", 400, body)
    assert body["code"] == 3  # INVALID_ARGUMENT
    (details,) = [d for d in body["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    violations = {v["field"]: v["description"] for v in details["fieldViolations"]}
    assert violations["name"] == "Project name too long. Maximum length is 200 characters"
    assert "Passphrase too short" in violations["passphrase"]


def test_a_path_parameter_is_validated_like_a_field(api):
    response = api.client.get("/v1/projects/not-a-uuid")
    assert response.status_code == 400, response.text
    (details,) = response.json()["details"]
    assert [v["field"] for v in details["fieldViolations"]] == ["project_id"]


def test_malformed_json_and_unknown_fields_are_refused_by_the_gateway(api):
    for body in ('{"name": ', '{"name": "n", "passphrase": "p", "colour": "red"}'):
        response = api.client.post(
            "/v1/projects", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, response.text
        # The gateway's own refusal is JSON too, shaped like the services' errors.
        assert response.json()["code"] == 3, response.text  # INVALID_ARGUMENT
        assert response.json()["message"]
    unknown_parameter = api.client.get("/v1/projects", params={"colour": "red"})
    assert unknown_parameter.status_code == 400
    assert unknown_parameter.json()["code"] == 3


def test_content_needs_the_unlock_token_header(api, project):
    pid = project["id"]
    missing = api.client.get(f"/v1/projects/{pid}/documents")
    assert missing.status_code == 401, missing.text
    assert missing.json()["code"] == 16  # UNAUTHENTICATED
    wrong = api.client.get(f"/v1/projects/{pid}/documents", headers={"x-unlock-token": "forged"})
    assert wrong.status_code == 401


@pytest.mark.parametrize(
    ("verb", "path"),
    [
        ("GET", "/v1/nothing-here"),
        ("GET", "/v1/projects/a/b/c/d"),
        ("POST", "/v1/projects:purge"),
        # gRPC paths of internal services, as JSON or as gRPC-Web: never routed.
        ("POST", "/contextcache.internal.v1.CryptoService/OpenKeyring"),
        ("POST", "/contextcache.internal.v1.QueryService/DeleteProjectVectors"),
        ("GET", "/admin"),
    ],
)
def test_unknown_and_internal_paths_reach_no_service(api, verb, path):
    response = api.client.request(verb, path, json={})
    assert response.status_code == 403, response.text
    if path.startswith("/v1/"):  # the JSON API's namespace: a JSON error
        assert response.json()["code"] == 7  # PERMISSION_DENIED
        assert response.json()["message"].startswith("Not a public ContextCache RPC")
    else:
        assert response.text.startswith("Not a public ContextCache RPC")
    assert "x-envoy-upstream-service-time" not in response.headers


def test_request_size_limit_holds_for_json(api):
    response = api.client.post(
        "/v1/projects",
        json={"name": "big", "passphrase": PASSPHRASE, "description": "x" * (6 * 1024 * 1024)},
    )
    assert response.status_code == 413, response.text[:200]


def test_an_upload_above_the_default_limit_reaches_ingest(api, project):
    """IngestDocument's route takes files up to 50 MB (base64 in JSON): a 6 MiB upload passes
    the gateway and is judged by the service (here refused for its extension)."""
    response = api.call(
        "IngestService/IngestDocument",
        "POST",
        f"/v1/projects/{project['id']}/documents",
        headers={"x-unlock-token": project["token"]},
        json={
            "file": {
                "filename": "big.docx",
                "content": base64.b64encode(b"x" * (6 * 1024 * 1024)).decode(),
            }
        },
    )
    assert response.status_code == 400, response.text[:300]
    (details,) = response.json()["details"]
    assert [v["field"] for v in details["fieldViolations"]] == ["file.filename"]


def test_over_the_unlock_limit_is_a_429_saying_when_to_retry(stack, project):
    """From an address of its own (limits are per client address). The windows are fixed
    minutes: one may end during the loop, so it runs until a second window fills."""
    api = Api(f"http://127.0.0.1:{stack.gateway_port}", source="127.0.0.42")
    path = f"/v1/projects/{project['id']}:unlock"
    try:
        statuses = []
        for _ in range(2 * (UNLOCKS_PER_MINUTE + 1)):
            response = api.client.post(path, json={"passphrase": PASSPHRASE})
            statuses.append(response.status_code)
            if response.status_code == 429:
                break
        assert statuses[-1] == 429, statuses
        assert set(statuses[:-1]) == {200}
        assert response.json()["code"] == 8  # RESOURCE_EXHAUSTED
        assert response.headers["x-ratelimit-remaining"] == "0"
        assert 0 < int(response.headers["x-ratelimit-reset"]) <= 60
        assert response.headers["retry-after"] == response.headers["x-ratelimit-reset"]
        (retry_info,) = response.json()["details"]
        assert retry_info["@type"] == "type.googleapis.com/google.rpc.RetryInfo"
        assert retry_info["retryDelay"] == response.headers["retry-after"] + "s"
    finally:
        api.client.close()


def test_change_passphrase_then_delete(api, stack):
    created = api.ok(
        "ProjectService/CreateProject",
        "POST",
        "/v1/projects",
        json={"name": "short-lived", "passphrase": PASSPHRASE},
    )["project"]
    pid = created["id"]
    new = PASSPHRASE + " again"
    api.ok(
        "ProjectService/ChangePassphrase",
        "POST",
        f"/v1/projects/{pid}:changePassphrase",
        json={"oldPassphrase": PASSPHRASE, "newPassphrase": new},
    )
    token = api.ok(
        "ProjectService/UnlockProject",
        "POST",
        f"/v1/projects/{pid}:unlock",
        json={"passphrase": new},
    )["unlockToken"]
    api.ok(
        "ProjectService/DeleteProject",
        "DELETE",
        f"/v1/projects/{pid}",
        headers={"x-unlock-token": token},
    )


def test_every_annotated_method_was_called_over_json():
    """Last in the module: the tests above reached every method with an HTTP rule."""
    assert set(http_rules()) - CALLED == set()
