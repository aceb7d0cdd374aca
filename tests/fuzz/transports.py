"""Ways to deliver one fuzzed request, and what came back, reduced to a status name.

- gRPC through Envoy (plaintext HTTP/2) and straight to a service port (mutual TLS, as a
  chosen workload), both with raw bytes so a frame may be any bytes at all;
- gRPC-Web through Envoy (HTTP/1.1, `application/grpc-web+proto`), parsing the status
  from the headers or the trailer frame;
- JSON over HTTP through Envoy's transcoder, on the routes of the `google.api.http` rules;
- raw HTTP requests of any shape (wrong content type, garbage bodies, bad JSON).

Every call carries a timeout, and every answer becomes an `Outcome`: the gRPC status name
when there is one, otherwise `HTTP_<status>`. Nothing here decides what is a bug except
`Outcome.is_failure`.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import urllib.parse
from dataclasses import dataclass

import grpc
import httpx
from google.api import annotations_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

TIMEOUT = 20.0
# Codes that say the server broke, whatever the request.
# CLIENT_TIMEOUT: no answer within TIMEOUT; CONNECTION_LOST: the gateway dropped the call.
FAILURE_CODES = frozenset({"INTERNAL", "UNKNOWN", "DATA_LOSS", "CLIENT_TIMEOUT", "CONNECTION_LOST"})
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


@dataclass(frozen=True)
class Outcome:
    code: str  # a gRPC status name (OK, INVALID_ARGUMENT…) or HTTP_<status>
    http_status: int | None = None
    detail: str = ""

    @property
    def is_failure(self) -> bool:
        # 503 is the documented answer while a dependency is down; any other 5xx is a bug.
        server_error = self.http_status is not None and self.http_status >= 500
        return self.code in FAILURE_CODES or (server_error and self.http_status != 503)


def path_of(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def grpc_call(
    channel: grpc.Channel,
    method: MethodDescriptor,
    payload: bytes,
    metadata: tuple[tuple[str, str], ...],
) -> Outcome:
    """One call with `payload` as the serialized request (which may be any bytes)."""
    if not all(sendable_header(value) for _, value in metadata):
        # gRPC refuses to send such a header (and says INTERNAL "Invalid metadata").
        return Outcome("NOT_SENT", detail="header value gRPC does not send")
    path = path_of(method)
    try:
        if method.server_streaming:
            stream = channel.unary_stream(path)(payload, metadata=metadata, timeout=5)
            for _ in stream:
                pass
        else:
            channel.unary_unary(path)(payload, metadata=metadata, timeout=TIMEOUT)
    except grpc.RpcError as error:
        code = error.code()
        if method.server_streaming and code == grpc.StatusCode.DEADLINE_EXCEEDED:
            # WatchDocument follows a document until it is terminal: the client gave up.
            return Outcome("OK", detail="stream still open at the client's deadline")
        return Outcome(code.name, detail=error.details() or "")
    return Outcome("OK")


def sendable_header(value: str) -> bool:
    return all(0x20 <= ord(c) <= 0x7E for c in value)


def grpc_web_frame(payload: bytes, flag: int = 0) -> bytes:
    return struct.pack(">BI", flag, len(payload)) + payload


def _grpc_web_status(response: httpx.Response) -> Outcome:
    status = response.headers.get("grpc-status")
    message = response.headers.get("grpc-message", "")
    body = response.content
    while status is None and len(body) >= 5:
        flag, length = struct.unpack(">BI", body[:5])
        frame, body = body[5 : 5 + length], body[5 + length :]
        if flag & 0x80:
            for line in frame.decode("latin-1").split("\r\n"):
                key, _, value = line.partition(":")
                if key.strip().lower() == "grpc-status":
                    status = value.strip()
                elif key.strip().lower() == "grpc-message":
                    message = value.strip()
    if status is None:
        return Outcome(f"HTTP_{response.status_code}", response.status_code, response.text[:200])
    code = CODE_NAMES.get(int(status), "UNKNOWN") if status.isdigit() else "UNKNOWN"
    return Outcome(code, response.status_code, message)


def http_outcome(response: httpx.Response) -> Outcome:
    """The status of any HTTP answer from Envoy: grpc-status when present (headers or a
    gRPC-Web trailer frame), otherwise the HTTP status."""
    if response.headers.get("content-type", "").startswith("application/grpc-web"):
        return _grpc_web_status(response)
    status = response.headers.get("grpc-status")
    if status is not None and status.isdigit():
        code = CODE_NAMES.get(int(status), "UNKNOWN")
        return Outcome(code, response.status_code, response.headers.get("grpc-message", ""))
    return Outcome(f"HTTP_{response.status_code}", response.status_code, response.text[:200])


def grpc_web_call(
    client: httpx.Client,
    base_url: str,
    method: MethodDescriptor,
    body: bytes,
    metadata: tuple[tuple[str, str], ...],
    text: bool = False,
    timeout: float = TIMEOUT,
) -> Outcome:
    """`body` is the whole HTTP body (well-formed frames or not)."""
    content_type = "application/grpc-web-text" if text else "application/grpc-web+proto"
    headers = {"content-type": content_type, "x-grpc-web": "1", **dict(metadata)}
    if text:
        body = base64.b64encode(body)
    return http_request(
        client, "POST", base_url + path_of(method), content=body, headers=headers, timeout=timeout
    )


def http_request(client: httpx.Client, verb: str, url: str, **kwargs: object) -> Outcome:
    try:
        response = client.request(verb, url, **kwargs)  # type: ignore[arg-type]
    except httpx.TimeoutException as error:
        return Outcome("CLIENT_TIMEOUT", detail=repr(error))
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as error:
        return Outcome("CONNECTION_LOST", detail=repr(error))
    return http_outcome(response)


@dataclass(frozen=True)
class HttpRoute:
    verb: str  # get, post, patch, delete, put
    template: str  # /v1/projects/{project_id}:unlock
    body: str  # "*", a field name, or "" (none)

    def variables(self) -> list[str]:
        return re.findall(r"{([^}=]+)(?:=[^}]*)?}", self.template)


def http_route(method: MethodDescriptor) -> HttpRoute | None:
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return None
    rule = options.Extensions[annotations_pb2.http]
    verb = rule.WhichOneof("pattern")
    return HttpRoute(verb, getattr(rule, verb), rule.body)


def json_call(
    client: httpx.Client,
    base_url: str,
    route: HttpRoute,
    request: Message,
    metadata: tuple[tuple[str, str], ...],
) -> Outcome:
    """The request as the transcoder expects it: path variables from the message, the rest
    in the body (or the query string for rules without a body)."""
    try:
        fields = json_format.MessageToDict(request, preserving_proto_field_name=False)
    except (json_format.SerializeToJsonError, ValueError) as error:
        # Values JSON cannot carry (a Timestamp past year 9999): nothing to send.
        return Outcome("CLIENT_SKIPPED", detail=str(error))
    path = route.template
    for name in route.variables():
        value = getattr(request, name, "")
        fields.pop(request.DESCRIPTOR.fields_by_name[name].json_name, None)
        path = re.sub(r"{" + re.escape(name) + r"(=[^}]*)?}", _escape(str(value)), path)
    headers = dict(metadata)
    if route.body:
        content = json.dumps(fields if route.body == "*" else fields.get(route.body, {}))
        headers["content-type"] = "application/json"
        return http_request(
            client, route.verb.upper(), base_url + path, content=content, headers=headers
        )
    params = {k: v for k, v in fields.items() if isinstance(v, str | int | bool)}
    return http_request(client, route.verb.upper(), base_url + path, params=params, headers=headers)


def _escape(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def raw_http(
    client: httpx.Client,
    base_url: str,
    verb: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    timeout: float = TIMEOUT,
) -> Outcome:
    return http_request(
        client, verb, base_url + path, content=body, headers=headers, timeout=timeout
    )
