// Loads sluice's /dashboard in Debian's headless Chromium, signs in with the
// admin token, and checks that the page shows the API's numbers, with no
// console errors and no request leaving 127.0.0.1.
// Env: ADMIN (http://127.0.0.1:PORT), TOKEN, ENDPOINT, SCREENSHOT (optional path).
import { chromium } from "playwright-core";

const admin = process.env.ADMIN, token = process.env.TOKEN, ep = process.env.ENDPOINT;
const problems = [];
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1100 } });
  page.on("console", m => { if (m.type() === "error") problems.push("console: " + m.text()); });
  page.on("pageerror", e => problems.push("page error: " + e.message));
  await page.route("**/*", route => {
    const u = new URL(route.request().url());
    if (u.hostname !== "127.0.0.1") {
      problems.push("external request: " + u.href);
      return route.abort();
    }
    return route.continue();
  });
  await page.goto(admin + "/dashboard");
  await page.fill("#token", token);
  await page.click("button[type=submit]");
  await page.waitForSelector("body[data-loaded='1']", { timeout: 15000 });
  await page.waitForSelector(`section[data-endpoint='${ep}'] svg polyline`, { timeout: 15000 });

  const api = await (await fetch(`${admin}/admin/v1/endpoints/${ep}/metrics?minutes=60`,
                                 { headers: { Authorization: "Bearer " + token } })).json();
  const shown = {};
  for (const v of api.versions) {
    const cell = async k => (await page.textContent(`[data-test='${k}-${v.version}']`)).trim();
    shown[v.version] = { requests: await cell("requests"), observed: await cell("observed"),
                         errors: await cell("errors"), p99: await cell("p99") };
    if (shown[v.version].requests !== String(v.requests))
      problems.push(`${v.version}: page shows ${shown[v.version].requests} requests, API ${v.requests}`);
    // the page's fmt(): "–" for a missing value (a mirror has no observed share)
    const fx = x => (x === null || x === undefined || x < 0) ? "–" : Number(x).toFixed(2);
    if (shown[v.version].observed !== fx(v.observed_share))
      problems.push(`${v.version}: page shows ${shown[v.version].observed} %, API ${v.observed_share}`);
    if (shown[v.version].errors !== (100 * v.error_rate).toFixed(2))
      problems.push(`${v.version}: error rate ${shown[v.version].errors} vs ${v.error_rate}`);
    if (shown[v.version].p99 !== fx(v.p99_ms))
      problems.push(`${v.version}: p99 ${shown[v.version].p99} vs ${v.p99_ms}`);
  }
  for (const c of api.comparisons) {
    const t = (await page.textContent(`[data-test='verdict-${c.treatment}']`)).trim();
    if (t !== c.verdict) problems.push(`${c.treatment}: verdict ${t} vs ${c.verdict}`);
  }
  // Shadow agreement (SPEC §7): the mirror versions' cells and differences.
  for (const v of api.versions.filter(v => v.agreement)) {
    const cell = async k => (await page.textContent(`[data-test='${k}-${v.version}']`)).trim();
    const a = v.agreement;
    shown[v.version] = Object.assign(shown[v.version] || {},
      { compared: await cell("agree-compared"), agreement: await cell("agree-rate"),
        differences: await cell("agree-different") });
    if (shown[v.version].compared !== String(a.compared))
      problems.push(`${v.version}: compared ${shown[v.version].compared} vs ${a.compared}`);
    if (a.equal_rate !== null && shown[v.version].agreement !== (100 * a.equal_rate).toFixed(2))
      problems.push(`${v.version}: agreement ${shown[v.version].agreement} vs ${a.equal_rate}`);
    if (shown[v.version].differences !== String(a.differences))
      problems.push(`${v.version}: differences ${shown[v.version].differences} vs ${a.differences}`);
    if (a.differences > 0) {
      const rows = await page.locator(`[data-test='diffs-${v.version}'] tr`).count();
      shown[v.version].diff_rows = rows - 1;
      shown[v.version].trace_ids = await page.locator(
        `[data-test='diffs-${v.version}'] [data-test='trace-id']`).allTextContents();
      if (rows < 2) problems.push(`${v.version}: no differences listed`);
    }
  }
  // Rollouts (SPEC §8): phase, step, share and one row per gate evaluation.
  const desc = await (await fetch(`${admin}/admin/v1/endpoints/${ep}`,
                                  { headers: { Authorization: "Bearer " + token } })).json();
  const rollouts = {};
  for (const v of desc.versions.filter(v => v.rollout)) {
    const ro = await (await fetch(`${admin}/admin/v1/endpoints/${ep}/versions/${v.name}/rollout`,
                                  { headers: { Authorization: "Bearer " + token } })).json();
    const text = async k => (await page.textContent(`[data-test='${k}-${v.name}']`)).trim();
    const rows = await page.locator(`[data-test='rollout-evals-${v.name}'] tr`).count();
    rollouts[v.name] = { phase: await text("rollout-phase"), step: await text("rollout-step"),
                         share: await text("rollout-share"), evaluations: Math.max(0, rows - 1) };
    const want = ro.state ? ro.state.phase : "not started";
    if (rollouts[v.name].phase !== want)
      problems.push(`${v.name}: rollout phase ${rollouts[v.name].phase} vs ${want}`);
    if (ro.state && rollouts[v.name].share !== String(ro.state.traffic_percentile))
      problems.push(`${v.name}: rollout share ${rollouts[v.name].share} vs ${ro.state.traffic_percentile}`);
    if (rollouts[v.name].evaluations !== ro.evaluations.length)
      problems.push(`${v.name}: ${rollouts[v.name].evaluations} evaluation rows vs ${ro.evaluations.length}`);
  }
  const charts = await page.locator(`section[data-endpoint='${ep}'] .chart`).count();
  if (charts < 5) problems.push(`only ${charts} charts`);
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  console.log(JSON.stringify({ shown, rollouts, problems }));
} finally {
  await browser.close();
}
process.exit(problems.length ? 1 : 0);
