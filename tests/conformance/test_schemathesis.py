"""API-wide property tests: schemathesis drives every REST operation of /openapi.json (generated from the
same descriptors the server transcodes with) with schema-derived and mutated inputs, and checks that the server
never answers 5xx, that every answer has the declared content type, and that every response, success or
google.rpc error, conforms to its schema."""

import os
import subprocess

import pytest
import requests

pytestmark = pytest.mark.timeout(600)


def test_openapi_document_describes_the_rest_surface(server):
    doc = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    gcc = "/alloydb/v1/projects/{parent_1}/locations/{parent_2}/clusters/{parent_3}:generateClientCertificate"
    assert "post" in paths[gcc]
    token = ("/gkemulticloud/v1/projects/{attached_cluster_1}/locations/{attached_cluster_2}/attachedClusters/"
             "{attached_cluster_3}:generateAttachedClusterAgentToken")
    assert paths[token]["post"]["security"] == []
    schemas = doc["components"]["schemas"]
    assert set(schemas["google.cloud.gkemulticloud.v1.GenerateAttachedClusterAgentTokenResponse"]["properties"]) == {
        "access_token", "expires_in", "token_type"}


def test_schemathesis_finds_no_server_errors_or_schema_violations(server, tmp_path):
    st = os.path.join(os.path.dirname(os.path.realpath(__file__)), ".venv", "bin", "st")
    result = subprocess.run(
        [st, "run", f"{server.url}/openapi.json", "-H", f"Authorization: Bearer {server.token}",
         "--max-examples", "10", "--seed", "20261124",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                     "response_schema_conformance,response_headers_conformance"],
        capture_output=True, text=True, timeout=540, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
