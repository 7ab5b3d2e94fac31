// The product documentation's sample request (REST APIs > Authentication), run as a client
// application would: log in with the documented fetch call, use csrf + jwt for a follow-up
// call, and check the documented 403 for a wrong password.
//
// usage: node seed_sample.mjs <baseUrl> <userName> <password>
// Exits 0 when everything matches, 1 (with the reason on stderr) otherwise.

import assert from "node:assert/strict";

const [url, user, pass] = process.argv.slice(2);
if (!url || !user || !pass) {
  console.error("usage: node seed_sample.mjs <baseUrl> <userName> <password>");
  process.exit(2);
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

function jwtPart(jwt, i) {
  const part = jwt.split(".")[i];
  return JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
}

async function auth(password, headerName = "Authorization") {
  // Exactly the documentation's sample, with the credentials filled in.
  const resp = await fetch(url + "/v1/auth", {
    method: "POST",
    headers: {
      [headerName]: "Token " + btoa(user + ":" + password),
      "Content-Type": "application/json",
    },
    body: "{}",
  });
  const json = await resp.json();
  return { resp, json };
}

try {
  const { resp, json } = await auth(pass);
  assert.equal(resp.status, 200, JSON.stringify(json));
  assert.match(resp.headers.get("content-type") ?? "", /^application\/json/);
  assert.deepEqual(
    Object.keys(json).sort(),
    ["csrf", "displayName", "emailAddress", "jwt", "orgUid", "sessionId", "status", "userName"],
    "the response has exactly the documented keys",
  );
  assert.equal(json.status, "OK");
  assert.equal(json.userName, user);
  assert.equal(json.orgUid, "cloudio");
  assert.match(json.sessionId, UUID);
  assert.match(json.csrf, UUID);
  assert.equal(json.jwt.split(".").length, 3);
  assert.equal(jwtPart(json.jwt, 0).alg, "HS256");
  const claims = jwtPart(json.jwt, 1);
  assert.equal(claims.session, json.sessionId, "jwt claim `session`");
  assert.equal(claims.csrf, json.csrf, "jwt claim `csrf`");
  assert.equal(claims.org_uid, json.orgUid, "jwt claim `org_uid`");

  // "csrf & jwt values in the response must be passed by the client application in all the
  // subsequent authenticated REST API calls."
  const s = await fetch(url + "/v1/session?csrf=" + encodeURIComponent(json.csrf), {
    headers: { Authorization: "Bearer " + json.jwt },
  });
  const session = await s.json();
  assert.equal(s.status, 200, JSON.stringify(session));
  assert.equal(session.status, "OK");
  assert.equal(session.sessionId, json.sessionId);
  assert.equal(session.userName, user);
  assert.equal(session.csrf, json.csrf);
  assert.equal(typeof session.roles, "object");
  assert.equal(session.jwt, undefined, "the session call does not hand out the jwt again");

  // Without the csrf the same jwt is not enough.
  const noCsrf = await fetch(url + "/v1/session", {
    headers: { Authorization: "Bearer " + json.jwt },
  });
  assert.equal(noCsrf.status, 401);

  // The documentation's header table names the header `Authentication`; it works too.
  const alt = await auth(pass, "Authentication");
  assert.equal(alt.resp.status, 200, JSON.stringify(alt.json));

  // The documented refusal, byte for byte in content.
  const bad = await auth(pass + "-wrong");
  assert.equal(bad.resp.status, 403);
  assert.deepEqual(bad.json, {
    code: 403,
    status: "ERROR",
    title: "Access Denied",
    message: "Access Denied - Invalid username and/or password!",
  });
} catch (e) {
  console.error("seed sample: FAILED:", e?.message ?? e);
  process.exit(1);
}
console.log("seed sample: OK");
