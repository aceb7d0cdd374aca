"""The OpenAPI document of the JSON API: generated from the protos, current and valid."""

from __future__ import annotations

import yaml
from openapi_spec_validator import validate

from runtime.config import REPO_ROOT
from tests.gateway.test_json_http import http_rules
from tools.openapi import render

IMAGE = REPO_ROOT / "build" / "contextcache.binpb"
COMMITTED = REPO_ROOT / "docs" / "openapi.yaml"


def document() -> dict:
    return yaml.safe_load(render(IMAGE))


def test_the_committed_document_is_generated_from_these_protos():
    assert COMMITTED.read_text(encoding="utf-8") == render(IMAGE), (
        "docs/openapi.yaml is stale: make openapi"
    )


def test_the_document_is_valid_openapi():
    validate(document())


def test_every_http_rule_is_one_operation():
    paths = document()["paths"]
    operations = {
        operation["operationId"]: (verb, path)
        for path, item in paths.items()
        for verb, operation in item.items()
    }
    expected = {name.replace("/", "_"): (verb, path) for name, (verb, path) in http_rules().items()}
    assert operations == expected


def test_path_query_and_body_follow_the_rule():
    paths = document()["paths"]
    ingest = paths["/v1/projects/{project_id}/documents"]["post"]
    (path_parameter, token) = ingest["parameters"]
    assert path_parameter == {
        "name": "project_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }
    assert token == {"$ref": "#/components/parameters/UnlockToken"}
    body = ingest["requestBody"]["content"]["application/json"]["schema"]
    # The path variable is not repeated in the body; the source is one of three.
    assert set(body["properties"]) == {"url", "file", "text", "background"}
    listing = paths["/v1/projects/{project_id}/documents"]["get"]
    query = {p["name"]: p["schema"] for p in listing["parameters"] if p.get("in") == "query"}
    assert set(query) == {"status", "pageSize", "pageToken"}
    assert "DOCUMENT_STATUS_COMPLETED" in query["status"]["enum"]
    watch = paths["/v1/projects/{project_id}/documents/{document_id}:watch"]["get"]
    assert watch["responses"]["200"]["content"]["application/json"]["schema"]["type"] == "array"


def test_schemas_use_the_proto3_json_mapping():
    schemas = document()["components"]["schemas"]
    file_source = schemas["FileSource"]["properties"]
    assert file_source["content"]["format"] == "byte"  # base64
    document_fields = schemas["Document"]["properties"]
    assert document_fields["chunkCount"]["type"] == "string"  # int64
    assert document_fields["createdAt"]["format"] == "date-time"
    assert "unlockToken" in schemas["UnlockProjectResponse"]["properties"]
