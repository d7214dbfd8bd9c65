// rein's dashboard in Debian's Chromium, driven by Playwright, against a real `rein serve`:
// sign in; start a run that asks for approval; the request appears in another tab's inbox
// without a reload; approve it with a note; the run's page shows it completing live; the costs
// page shows its spend; a second tenant's token sees none of it. Screenshots of every page at
// 1280x800 and 390x844 go to the directory given.
//
// Usage: NODE_PATH=<dir with playwright-core> node dashboard.cjs BASE_URL TOKEN_A TOKEN_B SCREENSHOT_DIR

const { chromium } = require("playwright-core");

const [base, tokenA, tokenB, shots] = process.argv.slice(2);
const SIZES = { wide: { width: 1280, height: 800 }, phone: { width: 390, height: 844 } };
const problems = [];

function check(cond, what) {
  if (!cond) throw new Error(`FAILED: ${what}`);
}

// Every request the pages make, to check against the OpenAPI document.
const requested = new Set();

function watch(page) {
  page.on("request", (r) => {
    const url = new URL(r.url());
    if (url.origin === new URL(base).origin && url.pathname.startsWith("/v1/")) requested.add(`${r.method().toLowerCase()} ${url.pathname}`);
  });
}

async function signIn(context, token) {
  const page = await context.newPage();
  watch(page);
  // Script errors and policy violations (a refused inline script would be one); a status a
  // request was meant to get (401 before sign-in, 403, 404) is not.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) problems.push(`console: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  await page.goto(base + "/");
  await page.waitForSelector("#token");
  // With the keyboard only: the field has focus; Enter submits.
  await page.keyboard.type(token);
  await page.keyboard.press("Enter");
  await page.waitForSelector("nav:not([hidden])");
  return page;
}

async function shoot(page, name) {
  for (const [size, viewport] of Object.entries(SIZES)) {
    await page.setViewportSize(viewport);
    // Nothing may stick out sideways: the page is as wide as the window.
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 1, `${name} at ${size} overflows the window by ${overflow}px`);
    await page.screenshot({ path: `${shots}/${name}-${size}.png`, fullPage: true });
  }
  await page.setViewportSize(SIZES.wide);
}

async function main() {
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
try {
  // The sign-in page.
  const anon = await browser.newContext({ viewport: SIZES.wide });
  const first = await anon.newPage();
  await first.goto(base + "/");
  await first.waitForSelector("#token");
  await shoot(first, "sign-in");
  await anon.close();

  const a = await browser.newContext({ viewport: SIZES.wide });
  const runs = await signIn(a, tokenA);
  // The token never reaches the page's scripts: the cookie is HttpOnly.
  check(!(await runs.evaluate(() => document.cookie)).includes("rein_"), "the session cookie is readable by scripts");
  const cookies = await a.cookies();
  check(cookies.some((c) => c.name === "rein_session" && c.httpOnly && c.sameSite === "Strict"),
    `the session cookie is HttpOnly and SameSite=Strict: ${JSON.stringify(cookies)}`);

  // The inbox is open in another tab before the run asks.
  const inbox = await a.newPage();
  watch(inbox);
  inbox.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  await inbox.goto(base + "/#/approvals");
  await inbox.waitForSelector("text=Nothing waits for a decision.");

  // Start a run that asks for approval.
  await runs.selectOption("#start-agent", "pay");
  await runs.click("text=Start a run");
  await runs.waitForURL(/#\/runs\/[0-9a-f]{32}$/);
  const runId = runs.url().split("/").pop();
  await runs.waitForSelector('li[data-kind="run_suspended"]');

  // It appears in the inbox without a reload; the card shows the recorded arguments.
  const card = inbox.locator(`[data-approval]`);
  await card.waitFor();
  check((await card.textContent()).includes('"amount": 5'), "the card shows the recorded arguments");
  await shoot(inbox, "approvals");
  // With the keyboard: the note, then Tab to Approve and Enter.
  await inbox.focus("textarea");
  await inbox.keyboard.type("customer verified by phone");
  await inbox.keyboard.press("Tab");
  check(await inbox.evaluate(() => document.activeElement.textContent === "Approve"), "Tab from the note reaches Approve");
  await inbox.keyboard.press("Enter");
  await inbox.waitForSelector("text=Approved.");

  // The run's page, open all along, shows it completing, live.
  await runs.waitForSelector('li[data-kind="run_ended"]');
  await runs.waitForSelector("#run-status .badge.completed");
  check((await runs.textContent("ol.timeline")).includes("customer verified by phone"), "the note is on the timeline");
  check((await runs.textContent("#calls")).includes("completed"), "the run's page sums up its tool calls");
  check((await runs.locator("text=Cancel").count()) === 0, "an ended run offers no cancel");
  await runs.click("#show-audit");
  await runs.waitForSelector("#audit-records table");
  check((await runs.textContent("#audit-records")).includes("approval_decided"), "the run's audit records include the decision");
  await shoot(runs, "run");

  await runs.goto(base + "/#/runs");
  await runs.waitForSelector(`a[href="#/runs/${runId}"]`);
  await shoot(runs, "runs");

  // Its spend is on the costs page.
  await runs.goto(base + "/#/costs");
  await runs.waitForSelector(".bars .fill");
  const costs = await runs.textContent("main");
  check(costs.includes("tenant:acme"), `the costs page shows the tenant's line: ${costs}`);
  check(/\$0\.0*[1-9]/.test(costs), `the costs page shows a spend: ${costs}`);
  check(costs.includes("By model") && costs.includes("By agent"), `the costs page charts spend by model and agent: ${costs}`);
  check(costs.includes("Runs that cost most") && (await runs.locator(`a[href="#/runs/${runId}"]`).count()) === 1,
    "the run is among the runs that cost most");
  await shoot(runs, "costs");

  await runs.goto(base + "/#/audit");
  await runs.click("text=Verify now");
  await runs.waitForSelector("dl.facts dt", { timeout: 60000 }).catch(async (e) => {
    throw new Error(`${e.message}\nthe audit page showed: ${await runs.textContent("main")}`);
  });
  check((await runs.textContent("main")).includes("ok"), "the audit log verifies");
  await shoot(runs, "audit");

  await runs.goto(base + "/#/agents");
  await runs.waitForSelector("text=Explain a decision");
  await runs.selectOption("#tool-pay", "pay");
  await runs.fill("#args-pay", '{"amount": 5}');
  await runs.click("#explain-button-pay");
  await runs.waitForSelector("#explain-pay .badge.ask");
  check((await runs.textContent("#explain-pay")).includes("a-person-pays"), "the explanation names the deciding policy");
  await shoot(runs, "agents");

  // A change without the dashboard's header is refused, even with the cookie.
  const forged = await runs.evaluate(async (id) => (await fetch(`/v1/runs/${id}/cancel`, { method: "POST" })).status, runId);
  check(forged === 403, `a cookie-signed change without the header is refused: ${forged}`);

  // Signing out revokes the session: its cookie, replayed, is refused.
  const sessionCookie = (await a.cookies()).find((c) => c.name === "rein_session").value;
  await runs.click("text=Sign out");
  await runs.waitForSelector("#token");
  const replay = await fetch(base + "/v1/session", { headers: { cookie: `rein_session=${sessionCookie}` } });
  check(replay.status === 401, `a signed-out session is refused: ${replay.status}`);
  check(!sessionCookie.includes(tokenA.split("_")[2]), "the cookie holds a session of its own, not the token typed in");

  // Another tenant sees none of it.
  const b = await browser.newContext({ viewport: SIZES.wide });
  const other = await signIn(b, tokenB);
  await other.waitForSelector("text=0 of 0 runs");
  await other.goto(base + "/#/approvals");
  await other.waitForSelector("text=Nothing waits for a decision.");
  await other.goto(base + "/#/costs");
  await other.waitForSelector("text=Nothing spent on a budget line yet.");
  await other.goto(base + `/#/runs/${runId}`);
  await other.waitForSelector("text=no run with that id");
  check(problems.length === 0, `the pages ran without errors: ${problems.join("; ")}`);
  // Every request the pages made is in the documented API.
  const doc = await (await fetch(base + "/v1/openapi.json")).json();
  const documented = Object.entries(doc.paths).flatMap(([path, ops]) => Object.keys(ops).map((m) =>
    ({ method: m, re: new RegExp(`^${path.replace(/\{[^}]+\}/g, "[^/]+")}$`) })));
  const undocumented = [...requested].filter((r) => {
    const [method, path] = r.split(" ");
    return !documented.some((d) => d.method === method && d.re.test(path));
  });
  check(requested.size >= 10 && undocumented.length === 0,
    `the pages call only the documented API (${requested.size} kinds of request): undocumented ${undocumented.join(", ")}`);
  console.log("ok");
} finally {
  await browser.close();
}
}

main().catch((e) => {
  // What the page showed when it failed goes to the report.
  console.error(e.stack || String(e));
  process.exit(1);
});
