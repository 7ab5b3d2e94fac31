// Drives the API playground of a running `cloudio serve --demo` in headless Chromium, as a
// newcomer would: open the server's root, log in, pick Employees, build a filter with the
// keyboard, run it, see rows and the elapsed time, edit a row and post it, post the now stale
// row again and see the 409 in place. Screenshots go to the artefact directory.
//
// node playground.mjs <base-url> <admin-password> <artefact-dir>
// Chromium: $CHROMIUM, else /usr/bin/chromium (Debian's; scripts/test.sh installs it).
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const [base, password, out] = process.argv.slice(2);
if (!base || !password || !out) {
  console.error("usage: node playground.mjs <base-url> <admin-password> <artefact-dir>");
  process.exit(2);
}
mkdirSync(out, { recursive: true });
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
  console.log("ok - " + what);
}

const browser = await chromium.launch({ executablePath, args: ["--no-sandbox", "--disable-gpu"] });
const shots = [];
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
  page = await context.newPage();
  page.setDefaultTimeout(15000);
  const foreign = [], problems = [];
  page.on("request", (r) => { if (!r.url().startsWith(base) && !r.url().startsWith("data:")) foreign.push(r.url()); });
  page.on("console", (m) => { if (m.type() === "error" && !/status of 409|status of 4\d\d/.test(m.text())) problems.push(m.text()); });
  page.on("pageerror", (e) => problems.push(String(e)));
  const shot = async (name) => {
    const path = join(out, name);
    await page.screenshot({ path, fullPage: true });
    shots.push(path);
  };

  // The root redirects to the playground.
  await page.goto(base + "/");
  check(new URL(page.url()).pathname === "/playground", "GET / lands on /playground");
  check((await page.title()).includes("Playground"), "the page is the playground");

  // Log in with the keyboard: the password field has focus, Enter submits.
  await page.locator("#password").fill(password);
  await page.locator("#password").press("Enter");
  const employees = page.locator('#ds-list button[data-ds="Employees"]');
  await employees.waitFor();
  check(await page.locator("#who").textContent().then((t) => t.includes("admin")), "logged in as admin");

  // Pick Employees; its attributes and their operators come from /v1/catalog.
  await employees.click();
  check((await page.locator("#ds-title").textContent()).includes("Employees"), "Employees selected");
  check(await page.locator("#sql-toggle-wrap").isVisible(), "admin is a developer: the SQL switch is there");

  // A filter: name contains "ab" AND salary >= 50000, sorted by salary descending.
  await page.locator("#add-filter").click();
  const c1 = page.locator("#filters .cond").nth(0);
  await c1.locator(".f-attr").selectOption("name");
  const stringOps = await c1.locator(".f-op option").evaluateAll((os) => os.map((o) => o.value));
  check(stringOps.includes("like") && !stringOps.includes("gte"), "a String attribute offers string operators only");
  await c1.locator(".f-op").selectOption("like");
  await c1.locator(".f-val").fill("ab");
  await page.locator("#add-filter").click();
  const c2 = page.locator("#filters .cond").nth(1);
  await c2.locator(".f-attr").selectOption("salary");
  const numberOps = await c2.locator(".f-op option").evaluateAll((os) => os.map((o) => o.value));
  check(numberOps.includes("gte") && !numberOps.includes("like"), "a Decimal attribute offers number operators only");
  await c2.locator(".f-op").selectOption("gte");
  await c2.locator(".f-val").fill("50000");
  await page.locator("#sort-attr").selectOption("salary");
  await page.locator("#sort-dir").selectOption("-1");
  await page.locator("#limit").fill("10");
  const preview = JSON.parse(await page.locator("#request-body").inputValue());
  check(JSON.stringify(preview.Employees.query.filter) === JSON.stringify([{ name: { like: "ab" } }, { salary: { gte: 50000 } }]),
    "the request preview shows the filter as the API takes it");

  // Enter in a value field runs the query.
  await c2.locator(".f-val").press("Enter");
  await page.locator("#result-table").waitFor();
  check((await page.locator("#result-status").textContent()).startsWith("200"), "the query answered 200");
  const rows = await page.locator("#result-table tr").count() - 1;
  check(rows > 0 && rows <= 10, `rows are shown (${rows})`);
  const elapsed = await page.locator("#elapsed").textContent();
  check(/Elapsed \d+ ms \(server: query \d+ ms\)/.test(elapsed), `the elapsed time is shown: "${elapsed}"`);
  check(/of \d+/.test(await page.locator("#summary").textContent()), "the total count is shown");
  const sql = await page.locator("#sql").textContent();
  check(/SELECT .* FROM demo\.EMPLOYEES/.test(sql) && sql.includes("%ab%"), "the SQL and its binds are shown to a developer");
  const salaries = await page.locator("#result-table tr td.num").evaluateAll((tds) => tds.map((t) => t.textContent));
  check(salaries.length > 0, "numbers are right-aligned cells");
  await shot("1-query.png");
  // The README's picture: the first screen of it.
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(out, "playground.png") });
  shots.push(join(out, "playground.png"));

  // Edit the first row: the post form is filled with its key and lastUpdateDate.
  await page.locator("#result-table button.edit").first().click();
  check(await page.locator("#post-op").inputValue() === "U", "Edit prepares an update");
  const lock = await page.locator("#pf-lastUpdateDate").inputValue();
  check(/^\d{4}-\d\d-\d\dT/.test(lock), "the row's lastUpdateDate is in the form");
  await page.locator("#pf-salary").fill("123456");
  await page.locator("#send-post").click();
  await page.waitForFunction(() => document.querySelector("#result-status").textContent !== "…");
  check((await page.locator("#result-status").textContent()).startsWith("200"), "the update answered 200");
  check((await page.locator("#summary").textContent()).includes("1 row posted"), "one row posted");
  check((await page.locator("#rows").textContent()).includes("123456"), "the stored row shows the new salary");
  await shot("2-post.png");

  // Send the same form again: its lastUpdateDate is now stale.
  await page.locator("#send-post").click();
  await page.waitForFunction(() => /^409/.test(document.querySelector("#result-status").textContent));
  const err = await page.locator("#result-error").textContent();
  check(err.includes("409 Conflict") && err.includes("changed by someone else"), `the 409 is shown in place: "${err.trim()}"`);
  await shot("3-conflict.png");

  // A cloud function of the demo, granted to demo_user: name it, give its argument, Ctrl+Enter.
  await page.locator('#fn-list button', { hasText: "stats/*" }).click();
  check(await page.locator("#fn-panel").isVisible(), "the function form is shown");
  await page.locator("#fn-name").fill("salaryStats");
  await page.locator("#fn-arg").fill('{"gender": "F"}');
  await page.locator("#fn-arg").press("Control+Enter");
  await page.waitForFunction(() => /^200/.test(document.querySelector("#result-status").textContent));
  const answer = await page.locator("#json").textContent();
  check(answer.includes("averageSalary") && answer.includes("employees"), "the function's answer is shown");
  check((await page.locator("#sql").textContent()).includes("GROUP BY"), "with the SQL its db call ran");
  await shot("4-function.png");
  await employees.click();

  // Back to Employees: a fresh query form.
  check((await page.locator("#filters .cond").count()) === 0, "picking a datasource starts a new query");

  check(foreign.length === 0, "no request left the server: " + foreign.join(", "));
  check(problems.length === 0, "no script error or CSP violation: " + problems.join(" | "));
} catch (e) {
  if (page) {
    const path = join(out, "failure.png");
    await page.screenshot({ path, fullPage: true }).catch(() => {});
    console.error("failure screenshot: " + path);
  }
  throw e;
} finally {
  await browser.close();
  console.log("screenshots: " + shots.join(" "));
}
console.log("playground: OK");
