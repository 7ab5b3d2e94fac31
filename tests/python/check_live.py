"""Checks a running `cloudio serve --demo` with real third-party checkers:

1. `/v1/openapi.json` and `/v1/apps/demo/openapi.json` validate (openapi-spec-validator);
   every documented operation is served (no fallback 404/405), and the demo's schema has the
   right operators per attribute family;
2. `/metrics` parses with the Prometheus client's own text parser, and its counters move by
   exactly the traffic this script sends (requests by route and status, the latency
   histogram, logins and failures);
3. schemathesis fuzzes every operation from the document (bounded examples): no 500, every
   answer's status, content type and body as documented.

python check_live.py <base-url> <admin-password>     (run by crates/cli/tests/cli/playground.rs)
"""

import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

BASE, PASSWORD = sys.argv[1], sys.argv[2]
HERE = os.path.dirname(os.path.abspath(__file__))


def ok(what):
    print("ok - " + what, flush=True)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def request(method, path, body=None, headers=None):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(BASE + path, data=data, method=method, headers=headers or {})
    if data is not None and "Content-Type" not in req.headers:
        req.add_header("Content-Type", "application/json")
    try:
        with OPENER.open(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def login(user, password):
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return request("POST", "/v1/auth", {}, {"Authorization": "Token " + token})


def metrics():
    status, headers, body = request("GET", "/metrics")
    assert status == 200, status
    assert headers["Content-Type"].startswith("text/plain"), headers["Content-Type"]
    samples = {}
    types = {}
    for family in text_string_to_metric_families(body.decode()):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# ---- 1. The documents ----
status, _, body = request("GET", "/v1/openapi.json")
assert status == 200, status
doc = json.loads(body)
validate(doc)
assert doc["openapi"].startswith("3.1"), doc["openapi"]
ok(f"/v1/openapi.json is valid OpenAPI {doc['openapi']} ({len(doc['paths'])} paths)")

status, _, body = login("admin", PASSWORD)
assert status == 200, body
auth = json.loads(body)
guard = {"Authorization": "Bearer " + auth["jwt"], "X-CSRF-Token": auth["csrf"]}

for path, item in doc["paths"].items():
    concrete = path.replace("{app}", "demo").replace("{path}", "none/none")
    for method, op in item.items():
        if method not in ("get", "post", "put", "delete", "patch"):
            continue
        assert "default" in op["responses"], (path, method)
        if path == "/v1/logout":
            continue
        status, _, body = request(method.upper(), concrete, b"" if method == "post" else None, guard)
        if status in (404, 405):
            envelope = json.loads(body)
            assert envelope["message"] != "No such endpoint." and status != 405, (method, path, status, envelope)
        documented = set(op["responses"]) - {"default"}
        assert str(status) in documented or status >= 400, (method, path, status, documented)
ok("every documented operation is served by the router")

status, _, body = request("GET", "/v1/apps/demo/openapi.json", None, guard)
assert status == 200, body
app_doc = json.loads(body)
validate(app_doc)
schemas = app_doc["components"]["schemas"]
filters = schemas["EmployeesFilter"]["oneOf"][0]["properties"]
assert "like" in filters["name"]["properties"] and "gte" not in filters["name"]["properties"]
assert "gte" in filters["salary"]["properties"] and "like" not in filters["salary"]["properties"]
assert "lastNDays" in filters["joinDate"]["properties"]
assert schemas["EmployeesRow"]["x-cloudio"]["lockAttribute"] == "lastUpdateDate"
ok("/v1/apps/demo/openapi.json is valid, with operators per attribute family")
status, _, _ = request("GET", "/v1/apps/nosuchapp/openapi.json", None, guard)
assert status == 404, status
ok("an app the caller cannot use is a 404")

# ---- 2. Metrics after known traffic ----
before, types = metrics()
for name, kind in [
    ("cloudio_http_requests", "counter"),
    ("cloudio_http_request_duration_seconds", "histogram"),
    ("cloudio_logins", "counter"),
    ("cloudio_db_pool_connections", "gauge"),
    ("cloudio_script_executions", "counter"),
    ("cloudio_wf_queue_depth", "gauge"),
]:
    assert types.get(name) == kind, (name, types.get(name))
ok("/metrics parses with prometheus_client; the families have their types")

QUERIES = 5
query = {"E": {"ds": "Employees", "query": {"filter": [{"salary": {"gte": 1}}], "limit": 2}}}
for _ in range(QUERIES):
    status, _, body = request("POST", "/v1/api", query, guard)
    assert status == 200, body
status, _, _ = login("admin", "wrong-password")
assert status == 403, status
status, _, _ = request("POST", "/v1/api", {"E": {"ds": "NoSuch", "query": {}}}, guard)
assert status == 403, status
after, _ = metrics()

route = dict(method="POST", route="/v1/api", status="200")
assert value(after, "cloudio_http_requests_total", **route) - value(before, "cloudio_http_requests_total", **route) == QUERIES
denied = dict(method="POST", route="/v1/api", status="403")
assert value(after, "cloudio_http_requests_total", **denied) - value(before, "cloudio_http_requests_total", **denied) == 1
hist = dict(method="POST", route="/v1/api")
assert value(after, "cloudio_http_request_duration_seconds_count", **hist) - value(before, "cloudio_http_request_duration_seconds_count", **hist) == QUERIES + 1
inf = dict(method="POST", route="/v1/api", le="+Inf")
assert value(after, "cloudio_http_request_duration_seconds_bucket", **inf) == value(after, "cloudio_http_request_duration_seconds_count", **hist)
assert value(after, "cloudio_logins_total", outcome="denied") - value(before, "cloudio_logins_total", outcome="denied") == 1
assert value(after, "cloudio_logins_total", outcome="ok") >= 1
ok(f"counters moved by the traffic sent: {QUERIES} queries, 1 denied, 1 failed login")

# ---- 3. schemathesis ----
st = os.path.join(os.path.dirname(sys.executable), "schemathesis")
env = dict(os.environ, PYTHONPATH=HERE, SCHEMATHESIS_HOOKS="st_hooks")
started = time.monotonic()
run = subprocess.run(
    [st, "run", BASE + "/v1/openapi.json",
     "-H", "Authorization: Bearer " + auth["jwt"], "-H", "X-CSRF-Token: " + auth["csrf"],
     # Logging out would end the session the rest of the run uses.
     "--exclude-path", "/v1/logout",
     "--max-examples", os.environ.get("CLOUDIO_FUZZ_EXAMPLES", "25"),
     "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
     "--generation-with-security-parameters", "false",
     "--generation-deterministic",
     "--no-color"],
    # Its example cache lands in the working directory: a temporary one.
    env=env, capture_output=True, text=True, timeout=300, cwd=tempfile.mkdtemp(prefix="cloudio-st-"))
print(run.stdout[-3000:])
if run.returncode != 0:
    print(run.stderr[-3000:], file=sys.stderr)
    sys.exit(f"schemathesis failed ({run.returncode})")
ok(f"schemathesis: no 500, every answer as documented ({time.monotonic() - started:.0f} s)")

# The demo's own document drives `/v1/api` with queries and posts of Employees that are valid by
# its schema (each attribute's operators and value types): the filter compiler and the writes
# meet generated values; none may be a 500.
work = tempfile.mkdtemp(prefix="cloudio-st-")
app_doc_file = os.path.join(work, "demo.json")
with open(app_doc_file, "w") as f:
    json.dump(app_doc, f)
started = time.monotonic()
run = subprocess.run(
    [st, "run", app_doc_file, "--url", BASE,
     "-H", "Authorization: Bearer " + auth["jwt"], "-H", "X-CSRF-Token: " + auth["csrf"],
     "--max-examples", os.environ.get("CLOUDIO_FUZZ_EXAMPLES", "25"),
     "--checks", "not_a_server_error,response_schema_conformance",
     "--generation-with-security-parameters", "false",
     "--generation-deterministic",
     "--no-color"],
    env=env, capture_output=True, text=True, timeout=300, cwd=work)
print(run.stdout[-2000:])
if run.returncode != 0:
    print(run.stderr[-3000:], file=sys.stderr)
    sys.exit(f"schemathesis (demo's document) failed ({run.returncode})")
ok(f"schemathesis on /v1/apps/demo/openapi.json: no 500 ({time.monotonic() - started:.0f} s)")

print("live checks: OK")
