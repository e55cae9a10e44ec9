// Drives the admin console (`GET /ui`) of a running modelcache in headless
// Chromium and checks it against the admin API. Exits non-zero on any failure.
//
// Environment:
//   MC_ADMIN_URL    admin listener base URL, e.g. http://127.0.0.1:15000 (required)
//   MC_ADMIN_TOKEN  the admin token (required)
//   MC_SCENARIO     JSON (required): {"tenant","model","paraphrase_system","paraphrase_user",
//                   "expect_entry_id","delete_entry_id","unrelated_user"}
//   MC_SHOTS_DIR    folder for the PNG screenshots, created if missing
//                   (default: <os tmpdir>/modelcache-ui-shots)
//   MC_CHROMIUM     Chromium binary (default: /usr/bin/chromium)
//
// Run: node tests/ui/console.mjs   (after `npm ci` in tests/ui)

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const WAIT = 15_000;
const TOKEN_KEY = 'modelcache_admin_token';

function env(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`console.mjs: ${name} is not set`);
    process.exit(2);
  }
  return v;
}

const BASE = env('MC_ADMIN_URL').replace(/\/+$/, '');
const TOKEN = env('MC_ADMIN_TOKEN');
let S;
try {
  S = JSON.parse(env('MC_SCENARIO'));
} catch (e) {
  console.error(`console.mjs: MC_SCENARIO is not JSON: ${e.message}`);
  process.exit(2);
}
for (const k of ['tenant', 'model', 'paraphrase_user', 'expect_entry_id', 'delete_entry_id', 'unrelated_user']) {
  if (S[k] == null || S[k] === '') {
    console.error(`console.mjs: MC_SCENARIO lacks ${k}`);
    process.exit(2);
  }
}
S.paraphrase_system ??= '';
const SHOTS = process.env.MC_SHOTS_DIR || path.join(os.tmpdir(), 'modelcache-ui-shots');
fs.mkdirSync(SHOTS, { recursive: true });

// The admin API, called by this script itself.
async function adminApi(p, { method = 'GET', token = TOKEN, body } = {}) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(BASE + p, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, json, text, headers: res.headers };
}
async function apiOk(p) {
  const r = await adminApi(p);
  assert.equal(r.status, 200, `GET ${p}: ${r.status} ${r.text}`);
  return r.json;
}

const norm = (s) => String(s ?? '').replace(/\s+/g, ' ').trim();
// The turns of a ModelCache key text "role###content|||role###content".
const turns = (text) => String(text).split('|||').map((p) => {
  const i = p.indexOf('###');
  return i >= 0 ? { role: p.slice(0, i), content: p.slice(i + 3) } : { role: '', content: p };
});

let step = 0;
function done(msg) {
  console.log(`ok ${step} - ${msg}`);
}

// A watchdog, so that a stuck browser cannot hang CI.
const watchdog = setTimeout(() => {
  console.error('console.mjs: timed out after 240 s');
  process.exit(1);
}, 240_000);

const browser = await chromium.launch({
  executablePath: process.env.MC_CHROMIUM || '/usr/bin/chromium',
  args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
const page = await context.newPage();
page.setDefaultTimeout(WAIT);

const problems = [];
const dialogs = [];
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
page.on('console', (m) => {
  const t = m.text();
  if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(t)) problems.push(`CSP: ${t}`);
});
page.on('request', (r) => {
  const u = r.url();
  if (!u.startsWith(BASE + '/') && !u.startsWith('data:')) problems.push(`request to another origin: ${u}`);
  if (u.includes(TOKEN)) problems.push(`the token is in a URL: ${u}`);
});
page.on('dialog', (d) => { dialogs.push(d.message()); d.accept(); });

const shot = (name) => page.screenshot({ path: path.join(SHOTS, name), fullPage: true });
const loads = (sel) => page.evaluate((s) => Number(document.querySelector(s).dataset.loads || 0), sel);
const waitLoads = (sel, after) => page.waitForFunction(([s, n]) => {
  const e = document.querySelector(s);
  return Number(e.dataset.loads || 0) > n && !e.dataset.loading;
}, [sel, after], { timeout: WAIT });
const rowIds = () => page.$$eval('#entries tr.entry', (rs) => rs.map((r) => r.dataset.id));
const verdict = async () => {
  await page.waitForFunction(() => ['HIT', 'MISS'].includes(document.querySelector('#try-verdict').textContent.trim()), null, { timeout: WAIT });
  return page.$eval('#try-verdict', (e) => ({ text: e.textContent.trim(), cls: e.className }));
};

// Opens the detail of an entry, paging with "More" until its row shows.
async function openEntry(id) {
  const row = page.locator(`#entries tr.entry[data-id="${id}"]`);
  while (await row.count() === 0) {
    const more = page.locator('#entries-more');
    assert.ok(await more.isVisible(), `entry ${id} is not in the entry browser`);
    const before = await loads('#entries');
    await more.click();
    await waitLoads('#entries', before);
  }
  await row.click();
  await page.locator(`#detail[data-id="${id}"]`).waitFor({ state: 'visible' });
}

let failed = false;
try {
  // 1. The token prompt; a wrong token is refused; the right one is kept in sessionStorage only.
  step = 1;
  const resp = await page.goto(`${BASE}/ui`);
  assert.equal(resp.status(), 200, 'GET /ui');
  assert.match(resp.headers()['content-security-policy'] || '', /default-src 'none'/, 'the page is served with its CSP');
  await page.locator('#token').waitFor({ state: 'visible' });
  assert.ok(await page.locator('#connect').isVisible(), 'the Connect button shows');
  assert.ok(await page.locator('#app').isHidden(), 'nothing but the prompt shows before connecting');
  const wrong = `wrong-${TOKEN.split('').reverse().join('')}-x`;
  const refused = await adminApi('/admin/tenants', { token: wrong });
  assert.ok([401, 403].includes(refused.status), `a wrong token is refused by the API (${refused.status})`);
  await page.fill('#token', wrong);
  await page.click('#connect');
  await page.locator('#login-error').waitFor({ state: 'visible' });
  assert.equal(norm(await page.textContent('#login-error')), norm(refused.json.error.message), 'the API error message shows');
  assert.ok(await page.locator('#app').isHidden(), 'a wrong token does not connect');
  assert.equal(await page.evaluate((k) => sessionStorage.getItem(k), TOKEN_KEY), null, 'a wrong token is not kept');
  await page.fill('#token', TOKEN);
  await page.click('#connect');
  await page.locator('#app').waitFor({ state: 'visible' });
  await page.locator('#tiles .tile').first().waitFor({ state: 'visible' });
  assert.ok(await page.locator('#token').isHidden(), 'the prompt is gone');
  const stores = await page.evaluate((k) => ({
    session: sessionStorage.getItem(k),
    local: Object.keys(localStorage).map((key) => [key, localStorage.getItem(key)]),
  }), TOKEN_KEY);
  assert.equal(stores.session, TOKEN, 'the token is in sessionStorage');
  assert.ok(!stores.local.some(([k, v]) => String(v).includes(TOKEN) || k.includes(TOKEN)), 'the token is not in localStorage');
  assert.ok(!page.url().includes(TOKEN), 'the token is not in the URL');
  await shot('01-connect.png');
  done('token prompt, wrong token refused, connected; token in sessionStorage only');

  // 2. The scenario tenant's tile.
  step = 2;
  const tenants = (await apiOk('/admin/tenants')).tenants;
  const t = tenants.find((x) => x.name === S.tenant);
  assert.ok(t, `tenant ${S.tenant} is in /admin/tenants`);
  const tile = page.locator(`#tiles .tile[data-tenant="${S.tenant}"]`);
  await tile.waitFor({ state: 'visible' });
  assert.equal(await page.locator('#tiles .tile').count(), tenants.length, 'one tile per tenant');
  const tileEntries = Number((await tile.locator('.stat-entries .v').textContent()).replace(/\D/g, ''));
  assert.equal(tileEntries, t.entries, 'the tile shows the entry count');
  const rate = norm(await tile.locator('.stat-hitrate .v').textContent());
  if (t.since_start.hit_rate == null) assert.equal(rate, '—', 'no hit rate yet shows —');
  else assert.equal(rate, `${(t.since_start.hit_rate * 100).toFixed(1)}%`, 'the tile shows the hit rate');
  assert.equal(Number((await tile.locator('.stat-tokens .v').textContent()).replace(/\D/g, '')), t.since_start.saved_tokens.total, 'tokens saved');
  assert.match(await tile.locator('.stat-usd .v').textContent(), /^\$[\d,.]+$/, 'USD saved');
  if (t.policy) {
    assert.equal(norm(await tile.locator('.mode').textContent()), t.policy.mode, 'the tile shows the mode');
    assert.match(await tile.locator('.threshold').textContent(), /threshold 0?\.\d+|threshold 1/, 'the tile shows the threshold');
  }
  await shot('02-tiles.png');
  done(`tile of ${S.tenant} shows ${t.entries} entries`);

  // 3. The entry browser, then a search.
  step = 3;
  await page.waitForFunction(() => Number(document.querySelector('#entries').dataset.loads || 0) > 0, null, { timeout: WAIT });
  const pageSize = Number(await page.getAttribute('#entries', 'data-page-size'));
  assert.ok(pageSize > 0, 'the entry browser has a page size');
  const total = tenants.reduce((n, x) => n + Number(x.entries), 0);
  const all = await rowIds();
  assert.equal(all.length, Math.min(total, pageSize), 'row count = min(entries, page size)');
  const listed = (await apiOk(`/admin/entries?limit=${pageSize}`)).entries.map((e) => String(e.id));
  assert.deepEqual(all, listed, 'the rows are the newest entries, newest first');
  assert.equal(await page.locator('#entries-more').isVisible(), total > pageSize, '"More" shows when there are more');
  const expected = await apiOk(`/admin/entries/${S.expect_entry_id}`);
  // The longest word of the question's non-system turns (any turn if need be).
  const wordsOf = (ts) => ts.map((x) => x.content).join(' ').split(/[^A-Za-z0-9]+/).filter(Boolean).sort((a, b) => b.length - a.length);
  let words = wordsOf(turns(expected.question).filter((x) => x.role !== 'system'));
  if (!words.length) words = wordsOf(turns(expected.question));
  assert.ok(words.length, `the expected entry's question has a word to search: ${expected.question}`);
  const word = words[0];
  let before = await loads('#entries');
  await page.fill('#entries-q', word);
  await page.press('#entries-q', 'Enter');
  await waitLoads('#entries', before);
  const found = await rowIds();
  const apiFound = (await apiOk(`/admin/entries?q=${encodeURIComponent(word)}&limit=${pageSize}`)).entries.map((e) => String(e.id));
  assert.deepEqual(found, apiFound, `searching "${word}" lists what the API finds`);
  assert.ok(found.includes(String(S.expect_entry_id)), 'the expected entry is found');
  assert.ok(found.length <= all.length, 'the search narrows the list');
  for (const text of await page.$$eval('#entries tr.entry', (rs) => rs.map((r) => r.textContent))) {
    assert.ok(text.toLowerCase().includes(word.toLowerCase()), `row contains "${word}": ${text}`);
  }
  const firstRow = page.locator('#entries tr.entry').first();
  assert.match(norm(await firstRow.locator('td').nth(6).textContent()), /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/, 'dates as YYYY-MM-DD HH:MM:SS');
  await shot('03-entries.png');
  done(`entry browser lists ${all.length} rows; "${word}" narrows to ${found.length}`);

  // 4. The detail of the entry to delete.
  step = 4;
  before = await loads('#entries');
  await page.fill('#entries-q', '');
  await page.click('#entries-search');
  await waitLoads('#entries', before);
  const del = await apiOk(`/admin/entries/${S.delete_entry_id}`);
  await openEntry(S.delete_entry_id);
  const dq = norm(await page.textContent('#detail-question'));
  for (const x of turns(del.question)) {
    assert.ok(dq.includes(norm(x.content)), `the detail shows the question turn "${x.content}"`);
    if (x.role) assert.ok(dq.includes(x.role), `the detail labels the ${x.role} turn`);
  }
  assert.equal(await page.textContent('#detail-answer'), del.answer, 'the detail shows the answer');
  assert.equal(await page.textContent('#detail-params'), JSON.stringify(del.params, null, 2), 'the detail shows the params');
  const meta = norm(await page.textContent('#detail-meta'));
  for (const v of [del.model, del.origin, del.tenant]) assert.ok(meta.includes(v), `the detail shows ${v}`);
  assert.ok(await page.locator('#detail-delete').isVisible(), 'the detail has a Delete button');
  await shot('04-detail.png');
  done(`detail of entry ${S.delete_entry_id} shows its question and answer`);

  // 5. A paraphrase hits the expected entry.
  step = 5;
  await page.selectOption('#try-tenant', S.tenant);
  await page.fill('#try-model', S.model);
  await page.fill('#try-system', S.paraphrase_system);
  await page.fill('#try-user', S.paraphrase_user);
  await page.fill('#try-params', '');
  // The advanced messages box (folded away) must be empty, or it would win.
  await page.$eval('#try-messages', (e) => { e.value = ''; });
  await page.click('#try-run');
  let v = await verdict();
  assert.equal(v.text, 'HIT', `the paraphrase is a hit: ${await page.textContent('#try-result')}`);
  assert.ok(v.cls.split(/\s+/).includes('hit'), 'the verdict has class hit');
  const first = page.locator('#try-candidates .candidate').first();
  assert.equal(await first.getAttribute('data-entry-id'), String(S.expect_entry_id), 'the first candidate is the expected entry');
  assert.equal(await first.getAttribute('data-served'), 'true', 'the first candidate is served');
  assert.ok(await first.locator('.served-mark').isVisible(), 'the first candidate is marked served');
  const width = await first.locator('.bar').evaluate((b) => ({
    style: parseFloat(b.style.width), ratio: b.getBoundingClientRect().width / b.parentElement.getBoundingClientRect().width,
  }));
  assert.ok(width.style > 85 && width.ratio > 0.85, `the similarity bar is over 85% (${JSON.stringify(width)})`);
  assert.ok(await first.locator('.thr').count() === 1, 'the bar has a threshold marker');
  assert.ok(await first.locator('.check.pass').count() > 0, 'the served candidate passes its checks');
  assert.equal(await first.locator('.check.fail').count(), 0, 'the served candidate fails no check');
  await shot('05-try-hit.png');
  done(`"${S.paraphrase_user}" is a HIT on entry ${S.expect_entry_id} (bar ${width.style}%)`);

  // 5b. Another API: the Anthropic request the proxy answered, as a client
  // sent it, is a HIT; the same words as a chat are not.
  if (S.messages_request) {
    await page.$eval('#try-advanced', (d) => { d.open = true; });
    await page.selectOption('#try-route', 'messages');
    await page.fill('#try-request', JSON.stringify(S.messages_request));
    await page.fill('#try-headers', JSON.stringify(S.messages_headers || {}));
    await page.click('#try-run');
    v = await verdict();
    assert.equal(v.text, 'HIT', `the messages request is a hit: ${await page.textContent('#try-result')}`);
    await page.selectOption('#try-route', 'chat');
    await page.click('#try-run');
    v = await verdict();
    assert.equal(v.text, 'MISS', 'the same body as a chat is another partition');
    await page.fill('#try-request', '');
    await page.fill('#try-headers', '');
    done('a /v1/messages request is a HIT under its route, a MISS as a chat');
  }

  // 6. An unrelated question misses; every candidate fails a check.
  step = 6;
  await page.fill('#try-system', '');
  await page.fill('#try-user', S.unrelated_user);
  await page.click('#try-run');
  v = await verdict();
  assert.equal(v.text, 'MISS', 'the unrelated question is a miss');
  assert.ok(v.cls.split(/\s+/).includes('miss'), 'the verdict has class miss');
  const cands = page.locator('#try-candidates .candidate');
  const n = await cands.count();
  for (let i = 0; i < n; i++) {
    const c = cands.nth(i);
    assert.ok(await c.locator('.check.fail').count() >= 1, `candidate ${await c.getAttribute('data-entry-id')} fails a check`);
    assert.notEqual(await c.getAttribute('data-served'), 'true', 'no candidate is served');
    for (const title of await c.locator('.check').evaluateAll((ks) => ks.map((k) => k.title))) {
      assert.ok(title.length > 0, 'each check has its detail as a tooltip');
    }
  }
  await shot('06-try-miss.png');
  done(`"${S.unrelated_user}" is a MISS; all ${n} candidates fail a check`);

  // 7. Delete the entry from its detail.
  step = 7;
  await openEntry(S.delete_entry_id);
  before = await loads('#entries');
  const asked = dialogs.length;
  await page.click('#detail-delete');
  await page.waitForFunction((id) => !document.querySelector(`#entries tr.entry[data-id="${id}"]`), String(S.delete_entry_id), { timeout: WAIT });
  assert.ok(dialogs.length > asked, 'Delete asks for confirmation');
  await page.locator('#detail').waitFor({ state: 'hidden' });
  await waitLoads('#entries', before);
  assert.equal(await page.locator(`#entries tr.entry[data-id="${S.delete_entry_id}"]`).count(), 0, 'the row stays gone after the list reloads');
  assert.ok(await page.locator('#status').isVisible(), 'a status message shows');
  assert.match(await page.textContent('#status'), new RegExp(`\\b${S.delete_entry_id}\\b`), 'the status names the entry');
  const gone = await adminApi(`/admin/entries/${S.delete_entry_id}`);
  assert.equal(gone.status, 404, 'the entry is gone from the API');
  const after = (await apiOk('/admin/tenants')).tenants.find((x) => x.name === del.tenant);
  await page.waitForFunction(([tn, count]) => {
    const e = document.querySelector(`#tiles .tile[data-tenant="${tn}"] .stat-entries .v`);
    return e && Number(e.textContent.replace(/\D/g, '')) === count;
  }, [del.tenant, after.entries], { timeout: WAIT });
  await shot('07-deleted.png');
  done(`entry ${S.delete_entry_id} deleted: row gone, API answers 404`);

  // 8. The hit log.
  step = 8;
  const hitsBefore = await loads('#hits');
  await page.click('#refresh');
  await waitLoads('#hits', hitsBefore);
  await page.locator('#hits tr.hit').first().waitFor({ state: 'visible' });
  const hits = (await apiOk('/admin/hits?limit=50')).hits;
  const rows = page.locator('#hits tr.hit');
  assert.ok(await rows.count() >= 1, 'the hit log has a row');
  assert.equal(await rows.count(), hits.length, 'one row per recent hit');
  const h0 = rows.first();
  assert.equal(await h0.getAttribute('data-entry-id'), String(hits[0].entry_id), 'the newest hit comes first');
  const h0text = norm(await h0.textContent());
  assert.ok(h0text.includes(hits[0].similarity.toFixed(4)), 'the row shows the similarity');
  assert.ok(h0text.includes(hits[0].matched == null ? '(deleted)' : norm(turns(hits[0].matched).at(-1).content)), 'the row shows the matched question');
  await shot('08-hits.png');
  done(`hit log shows ${hits.length} rows`);

  // Sign out ends the session.
  step = 9;
  await page.click('#signout');
  await page.locator('#token').waitFor({ state: 'visible' });
  assert.equal(await page.evaluate((k) => sessionStorage.getItem(k), TOKEN_KEY), null, 'sign out clears the token');
  done('sign out clears the token and shows the prompt');

  assert.deepEqual(problems, [], 'no page errors, CSP violations or requests elsewhere');
} catch (e) {
  failed = true;
  console.error(`not ok ${step} - ${e.message}`);
  if (problems.length) console.error(problems.join('\n'));
  try { await page.screenshot({ path: path.join(SHOTS, `failed-step-${step}.png`), fullPage: true }); } catch { /* ignore */ }
} finally {
  await browser.close().catch(() => {});
  clearTimeout(watchdog);
}
process.exit(failed ? 1 : 0);
