// Drives gantry's status page in a real Chromium (Debian's /usr/bin/chromium,
// through playwright-core: no browser download) for tests/e2e/status_page.rs.
//
//   node status_page.mjs <page url> <screenshot.png>
//
// Speaks JSON lines on stdout: {"stage":"first",…} once the page rendered its
// first snapshot; then waits for "next" on stdin (the test made more traffic),
// waits for two more live updates, prints {"stage":"live",…}, saves the
// screenshot and prints {"stage":"done","errors":[…],"dialogs":[…]} (script
// errors on the page, and the prompts it showed). With TOKEN set, a prompt for
// the metrics port's token is answered with it.
import readline from "node:readline";
import { chromium } from "playwright-core";

const [url, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // As root in a container Chromium needs --no-sandbox.
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const errors = [];
const dialogs = [];
try {
  const page = await browser.newPage({ viewport: { width: 1500, height: 1000 } });
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("dialog", async (d) => {
    dialogs.push(d.message());
    if (process.env.TOKEN) await d.accept(process.env.TOKEN);
    else await d.dismiss();
  });
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
  });

  const updates = () => page.evaluate(() => Number(document.querySelector('[data-field="updates"]').textContent));
  const waitUpdates = (atLeast) =>
    page.waitForFunction(
      (n) => Number(document.querySelector('[data-field="updates"]').textContent) >= n,
      atLeast,
      { timeout: 20000 },
    );
  // What a person sees: every table's rows (cells by column) per section,
  // and the header's facts.
  const read = () =>
    page.evaluate(() => {
      const out = { fields: {}, sections: {} };
      for (const el of document.querySelectorAll("[data-field]")) out.fields[el.dataset.field] = el.textContent;
      for (const section of document.querySelectorAll("section")) {
        out.sections[section.id] = [...section.querySelectorAll("table")].map((t) =>
          [...t.tBodies[0].rows].map((r) => Object.fromEntries([...r.cells].map((c) => [c.dataset.col, c.textContent]))),
        );
      }
      out.charts = [...document.querySelectorAll("svg[data-chart] polyline")].map((p) => p.closest("svg").dataset.chart);
      return out;
    });

  await page.goto(url);
  await waitUpdates(1);
  console.log(JSON.stringify({ stage: "first", ...(await read()) }));

  const input = readline.createInterface({ input: process.stdin });
  for await (const line of input) {
    if (line.trim() === "next") break;
  }
  input.close();
  // Two more: the first of them may have been asked before the traffic.
  await waitUpdates((await updates()) + 2);
  console.log(JSON.stringify({ stage: "live", ...(await read()) }));
  await page.screenshot({ path: screenshot, fullPage: true });
} catch (e) {
  errors.push(`driver: ${e}`);
} finally {
  await browser.close();
  console.log(JSON.stringify({ stage: "done", errors, dialogs }));
}
