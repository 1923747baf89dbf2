// Loads sluice's /dashboard in Debian's headless Chromium, signs in with the
// admin token, and checks that the page shows the API's numbers, with no
// console errors and no request leaving 127.0.0.1.
// Env: ADMIN (http://127.0.0.1:PORT), TOKEN, ENDPOINT, SCREENSHOT (optional path).
import { chromium } from "playwright-core";

const admin = process.env.ADMIN, token = process.env.TOKEN, ep = process.env.ENDPOINT;
const problems = [];
// The newest minute of the API's series (they all share the window).
const v0last = api => api.versions[0].series[api.versions[0].series.length - 1].minute;
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

  // Axes: time labels (HH:MM) under the first chart, value labels with the
  // unit beside it; the time axis spans the window (1 h by default).
  const first = page.locator(`section[data-endpoint='${ep}'] .chart`).first();
  const svg = first.locator("svg");
  const xl = await svg.locator("text.x-label").allTextContents();
  const yl = await svg.locator("text.y-label").allTextContents();
  const axes = { x: xl, y: yl, from: Number(await svg.getAttribute("data-from")),
                 to: Number(await svg.getAttribute("data-to")) };
  if (xl.length < 2 || !xl.every(t => /^\d\d:\d\d$/.test(t)))
    problems.push(`time labels: ${JSON.stringify(xl)}`);
  if (yl.length !== 3 || !yl.every(t => t.endsWith("/s")))
    problems.push(`value labels: ${JSON.stringify(yl)}`);
  if (axes.to - axes.from !== 3600) problems.push(`the 1 h window spans ${axes.to - axes.from} s`);

  // Hover: at the right edge, the tip names the newest minute and each
  // version's requests per second there, as the API has them.
  const box = await svg.boundingBox();
  await page.mouse.move(box.x + box.width - 3, box.y + box.height / 2);
  const tip = first.locator("[data-test='tip']");
  await tip.waitFor({ state: "visible", timeout: 5000 });
  const hover = { time: Number(await tip.getAttribute("data-time")), values: {} };
  for (const v of api.versions) {
    const row = tip.locator(`[data-series='${v.version}']`);
    hover.values[v.version] = { text: (await row.textContent()).trim(),
                                value: Number(await row.getAttribute("data-value")) };
    const pt = v.series.find(p => 60 * p.minute === hover.time);
    if (!pt) problems.push(`hover time ${hover.time} is not a minute of the API's series`);
    else if (Math.abs(hover.values[v.version].value - pt.requests / 60) > 1e-9)
      problems.push(`${v.version}: hover shows ${hover.values[v.version].value}/s, API ${pt.requests / 60}`);
    if (!hover.values[v.version].text.startsWith(v.version + ": "))
      problems.push(`${v.version}: hover text ${hover.values[v.version].text}`);
  }
  if (hover.time !== 60 * v0last(api)) problems.push(`hover time ${hover.time}: not the newest minute`);

  // The window selector: 15 min asks the API for 15 minutes; the axis and
  // the table follow.
  await page.selectOption("[data-test='window']", "15");
  await page.waitForSelector("body[data-loaded='1']", { timeout: 15000 });
  const svg15 = page.locator(`section[data-endpoint='${ep}'] .chart`).first().locator("svg");
  const span15 = Number(await svg15.getAttribute("data-to")) - Number(await svg15.getAttribute("data-from"));
  const api15 = await (await fetch(`${admin}/admin/v1/endpoints/${ep}/metrics?minutes=15`,
                                   { headers: { Authorization: "Bearer " + token } })).json();
  const window15 = { span: span15, labels: await svg15.locator("text.x-label").allTextContents(),
                     requests: {} };
  if (span15 !== 900) problems.push(`the 15 min window spans ${span15} s`);
  for (const v of api15.versions) {
    window15.requests[v.version] = (await page.textContent(`[data-test='requests-${v.version}']`)).trim();
    if (window15.requests[v.version] !== String(v.requests))
      problems.push(`15 min: ${v.version} shows ${window15.requests[v.version]} requests, API ${v.requests}`);
  }
  await page.selectOption("[data-test='window']", "1440");
  await page.waitForSelector("body[data-loaded='1']", { timeout: 15000 });
  const svg24 = page.locator(`section[data-endpoint='${ep}'] .chart`).first().locator("svg");
  const span24 = Number(await svg24.getAttribute("data-to")) - Number(await svg24.getAttribute("data-from"));
  if (span24 !== 86400) problems.push(`the 24 h window spans ${span24} s`);
  await page.selectOption("[data-test='window']", "60");
  await page.waitForSelector("body[data-loaded='1']", { timeout: 15000 });
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  console.log(JSON.stringify({ shown, rollouts, axes, hover, window15, problems }));
} finally {
  await browser.close();
}
process.exit(problems.length ? 1 : 0);
