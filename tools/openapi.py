"""Write the OpenAPI 3 document of the JSON API (the gateway's gRPC-JSON transcoding).

Generated from the protos' descriptor set (with source info, for the comments) exactly as
Envoy's transcoder reads them: one operation per google.api.http rule of a public
(contextcache.v1) method; path variables and, for GET and DELETE, the other top-level scalar
fields as parameters; `body: "*"` as a JSON request body; schemas in the proto3 JSON mapping
(lowerCamel names, int64 as strings, bytes as base64, enums by name, Timestamp as RFC 3339).

No registry package ships grpc-gateway's protoc-gen-openapiv2 (a Go plugin; PyPI has only
its option bindings), hence this small generator. It never edits the protos.

    python tools/openapi.py build/contextcache.binpb > docs/openapi.yaml
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

PACKAGE = "contextcache.v1"
UNLOCK_HEADER = "x-unlock-token"
T = descriptor_pb2.FieldDescriptorProto

SCALARS: dict[int, dict[str, Any]] = {
    T.TYPE_DOUBLE: {"type": "number", "format": "double"},
    T.TYPE_FLOAT: {"type": "number", "format": "float"},
    T.TYPE_INT32: {"type": "integer", "format": "int32"},
    T.TYPE_SINT32: {"type": "integer", "format": "int32"},
    T.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    T.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    T.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0},
    # 64-bit integers are JSON strings in the proto3 mapping.
    T.TYPE_INT64: {"type": "string", "format": "int64"},
    T.TYPE_SINT64: {"type": "string", "format": "int64"},
    T.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    T.TYPE_UINT64: {"type": "string", "format": "uint64"},
    T.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    T.TYPE_BOOL: {"type": "boolean"},
    T.TYPE_STRING: {"type": "string"},
    T.TYPE_BYTES: {"type": "string", "format": "byte"},
}
WELL_KNOWN: dict[str, dict[str, Any]] = {
    ".google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    ".google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]+)?s$",
        "example": "3600s",
    },
    ".google.protobuf.FieldMask": {
        "type": "string",
        "description": "Comma-separated field paths, e.g. `name,description`.",
    },
    ".google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": True,
    },
}
STATUS_SCHEMA = {
    "type": "object",
    "description": (
        "A google.rpc.Status: the gRPC code, a message a person can act on and typed details,"
        " e.g. google.rpc.BadRequest whose fieldViolations name each refused field."
    ),
    "properties": {
        "code": {"type": "integer", "format": "int32"},
        "message": {"type": "string"},
        "details": {"type": "array", "items": WELL_KNOWN[".google.protobuf.Any"]},
    },
}


class Api:
    """The messages, enums and comments of a descriptor set, by full name."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.files = list(files.file)
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.comments: dict[str, str] = {}  # full name (message, field, method) → comment
        for file in self.files:
            locations = file.source_code_info.location
            where = {tuple(loc.path): loc.leading_comments for loc in locations}
            scope = f".{file.package}" if file.package else ""
            for i, message in enumerate(file.message_type):
                self._add_message(message, scope, (4, i), where)
            for enum in file.enum_type:
                self.enums[f"{scope}.{enum.name}"] = enum
            for s, service in enumerate(file.service):
                for m, method in enumerate(service.method):
                    name = f"{scope}.{service.name}.{method.name}"
                    self.comments[name] = where.get((6, s, 2, m), "")

    def _add_message(self, message, scope: str, path: tuple, where: dict) -> None:
        name = f"{scope}.{message.name}"
        self.messages[name] = message
        self.comments[name] = where.get(path, "")
        for j, field in enumerate(message.field):
            self.comments[f"{name}.{field.name}"] = where.get((*path, 2, j), "")
        for j, nested in enumerate(message.nested_type):
            self._add_message(nested, name, (*path, 3, j), where)
        for enum in message.enum_type:
            self.enums[f"{name}.{enum.name}"] = enum

    def services(self):
        for file in self.files:
            if file.package == PACKAGE:
                yield from ((f".{PACKAGE}.{s.name}", s) for s in file.service)


def _text(comment: str) -> str:
    return " ".join(comment.split())


def _json_name(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.json_name:
        return field.json_name
    head, *rest = field.name.split("_")
    return head + "".join(part.title() for part in rest)


def _schema_name(full_name: str) -> str:
    return full_name.removeprefix(f".{PACKAGE}.").lstrip(".").replace(".", "_")


class Document:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.schemas: dict[str, dict[str, Any]] = {"google.rpc.Status": STATUS_SCHEMA}

    def ref(self, type_name: str) -> dict[str, Any]:
        if type_name in WELL_KNOWN:
            return dict(WELL_KNOWN[type_name])
        name = _schema_name(type_name)
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder: recursive messages end here
            self.schemas[name] = self.message_schema(type_name)
        return {"$ref": f"#/components/schemas/{name}"}

    def field_schema(self, field: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
        if field.type == T.TYPE_MESSAGE:
            entry = self.api.messages.get(field.type_name)
            if entry is not None and entry.options.map_entry:
                _key, value = entry.field
                return {"type": "object", "additionalProperties": self.field_schema(value)}
            item = self.ref(field.type_name)
        elif field.type == T.TYPE_ENUM:
            enum = self.api.enums[field.type_name]
            item = {"type": "string", "enum": [value.name for value in enum.value]}
        else:
            item = dict(SCALARS[field.type])
        if field.label == T.LABEL_REPEATED:
            return {"type": "array", "items": item}
        return item

    def message_schema(self, type_name: str, without: frozenset[str] = frozenset()):
        message = self.api.messages[type_name]
        properties = {}
        for field in message.field:
            if field.name in without:
                continue
            schema = self.field_schema(field)
            comment = _text(self.api.comments.get(f"{type_name}.{field.name}", ""))
            real_oneof = field.HasField("oneof_index") and not field.proto3_optional
            if real_oneof:
                group = message.oneof_decl[field.oneof_index].name
                comment = f"{comment} (one of `{group}`)".strip()
            if comment:
                schema = (
                    {"allOf": [schema], "description": comment}
                    if "$ref" in schema
                    else {**schema, "description": comment}
                )
            properties[_json_name(field)] = schema
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        if comment := _text(self.api.comments.get(type_name, "")):
            schema["description"] = comment
        return schema

    def operation(self, service_name: str, service, method, rule) -> tuple[str, str, dict]:
        verb = rule.WhichOneof("pattern")
        template = getattr(rule, verb)
        request = self.api.messages[method.input_type]
        fields = {field.name: field for field in request.field}
        path_fields = re.findall(r"{([a-z_][a-z0-9_]*)}", template)
        parameters = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": self.field_schema(fields[name]),
            }
            for name in path_fields
        ]
        operation: dict[str, Any] = {
            "operationId": f"{service.name}_{method.name}",
            "tags": [service.name],
            "summary": _text(self.api.comments.get(f"{service_name}.{method.name}", "")),
            "description": f"gRPC: `/{service_name.lstrip('.')}/{method.name}`",
        }
        if rule.body == "*":
            body_schema = (
                self.message_schema(method.input_type, frozenset(path_fields))
                if path_fields
                else self.ref(method.input_type)
            )
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body_schema}},
            }
        elif not rule.body:
            for field in request.field:
                scalar = field.type != T.TYPE_MESSAGE
                if field.name not in path_fields and scalar:
                    parameters.append(
                        {
                            "name": _json_name(field),
                            "in": "query",
                            "required": False,
                            "schema": self.field_schema(field),
                        }
                    )
        parameters.append({"$ref": "#/components/parameters/UnlockToken"})
        operation["parameters"] = parameters
        response = self.ref(method.output_type)
        if method.server_streaming:
            response = {"type": "array", "items": response}
            operation["description"] += (
                " (server stream: a JSON array whose elements arrive as they are sent)"
            )
        operation["responses"] = {
            "200": {
                "description": "OK",
                "content": {"application/json": {"schema": response}},
            },
            "default": {
                "description": (
                    "An error: the HTTP status of the gRPC code (400 INVALID_ARGUMENT or"
                    " FAILED_PRECONDITION, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED,"
                    " 404 NOT_FOUND, 409 ALREADY_EXISTS, 429 RESOURCE_EXHAUSTED with"
                    " x-ratelimit-* headers, 503 UNAVAILABLE)"
                ),
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/google.rpc.Status"}
                    }
                },
            },
        }
        return template, verb, operation


def build(files: descriptor_pb2.FileDescriptorSet) -> dict[str, Any]:
    api = Api(files)
    document = Document(api)
    paths: dict[str, dict[str, Any]] = {}
    for service_name, service in api.services():
        for method in service.method:
            if not method.options.HasExtension(annotations_pb2.http):
                continue
            rule = method.options.Extensions[annotations_pb2.http]
            path, verb, operation = document.operation(service_name, service, method, rule)
            paths.setdefault(path, {})[verb] = operation
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "ContextCache API — JSON over HTTP",
            "version": "v1",
            "description": (
                "The public gRPC API (contextcache.v1) as JSON over HTTP, transcoded by the"
                " gateway (Envoy). Generated from the protos by tools/openapi.py; do not edit."
                " Content calls need the unlock token from"
                " `POST /v1/projects/{project_id}:unlock` in the `x-unlock-token` header."
            ),
        },
        "servers": [{"url": "http://127.0.0.1:8080"}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "parameters": {
                "UnlockToken": {
                    "name": UNLOCK_HEADER,
                    "in": "header",
                    "required": False,
                    "description": (
                        "The project's unlock token; needed by every call that reads or"
                        " writes a project's content."
                    ),
                    "schema": {"type": "string"},
                }
            },
            "schemas": dict(sorted(document.schemas.items())),
        },
    }


def render(descriptor_set: Path) -> str:
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(descriptor_set.read_bytes())
    header = "# Generated by tools/openapi.py from the protos (make openapi); do not edit.\n"
    return header + yaml.safe_dump(build(files), sort_keys=False, allow_unicode=True, width=100)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.stdout.write(render(Path(sys.argv[1])))
