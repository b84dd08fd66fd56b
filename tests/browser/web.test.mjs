// web.test.mjs: the customer's page in a real browser, against the real system.
//
// Starts nats-server and the five carshare binaries on free ports (through
// launch_system.py, which reuses tests/e2e/harness.py), drives Debian's
// chromium with playwright-core, and does what a customer does: creates an
// account and is signed in (the token in sessionStorage, never in
// localStorage), rents a car, sees it approved and then delivered ("Shipped")
// in My rentals, cancels it through the confirmation dialog, sees it
// cancelled and refunded with its history, sees a declined card's message,
// signs out; a second customer signs up and sees none of the first one's
// rentals; a token the server refuses, and one whose expiry passes while the
// page is open, lead back to the sign-in form with a message saying so. Then the same page at phone width in a new tab: the
// first customer signs in again, nothing overflows, a double press of "Rent"
// rents once, the Korean labels work and are remembered. Last, staff (admin,
// whose password make run keeps in <data>/secrets/admin-password) see every
// rental with its payment and delivery and cancel one of the customer's. In
// between, a rental for a period: a start date two days ahead and three days,
// availability and the price for those dates before paying, the period in My
// rentals, and "Return the car" through its dialog.
//
// A screenshot of each step goes to $BROWSER_OUT (default:
// <build>/browser-out next to $CARSHARE_BIN, else a temporary directory);
// the paths are printed. CARSHARE_URL=http://host:port runs the test
// against a system that is already up (e.g. `make run`) instead.
//
// Run: cd tests/browser && npm ci && CARSHARE_BIN=<build>/bin node --test

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const STEP_TIMEOUT_MS = 30000;       // one event-driven step (shipped, refunded)
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
const DECLINED_CARD = '4000000000000002';

function outputDir() {
  let dir = process.env.BROWSER_OUT;
  if (!dir && process.env.CARSHARE_BIN) dir = path.resolve(process.env.CARSHARE_BIN, '..', 'browser-out');
  if (!dir) dir = fs.mkdtempSync(path.join(os.tmpdir(), 'carshare-browser-out-'));
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

// ---- the system under test ----

function startSystem() {
  return new Promise((resolve, reject) => {
    const child = spawn('python3', [path.join(here, 'launch_system.py')], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' },
    });
    let stdout = '';
    let stderr = '';
    let settled = false;
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      child.kill('SIGTERM');
      reject(new Error('the system did not start within 90 s\n' + stderr));
    }, 90000);
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
      const line = stdout.split('\n').find((l) => l.trim().startsWith('{'));
      if (line && !settled) {
        settled = true;
        clearTimeout(timer);
        resolve({ child, info: JSON.parse(line), stderr: () => stderr });
      }
    });
    child.stderr.on('data', (chunk) => {
      stderr += chunk;
      process.stderr.write(chunk);
    });
    child.on('exit', (code) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(new Error(`launch_system.py exited with ${code} before the system was up\n${stderr}`));
    });
  });
}

async function stopSystem(system, failed) {
  const { child } = system;
  if (child.exitCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  if (failed) child.stdin.write('failed\n');
  child.stdin.end();
  child.kill('SIGTERM');   // by PID: the launcher stops its own children by PID
  const timeout = new Promise((resolve) => setTimeout(() => resolve('timeout'), 30000));
  if ((await Promise.race([exited, timeout])) === 'timeout') {
    child.kill('SIGKILL');
    await exited;
  }
}

// ---- helpers ----

// The first customer's token once signed in, for the checks made through the API.
let token = null;

async function api(base, method, urlPath, body, asToken) {
  const headers = body ? { 'Content-Type': 'application/json' } : {};
  if (asToken || token) headers.Authorization = 'Bearer ' + (asToken || token);
  const res = await fetch(base + urlPath, {
    method,
    headers,
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  return { status: res.status, data };
}

async function signIn(base, customerId, password) {
  const res = await api(base, 'POST', '/sessions', { customerId, password });
  assert.equal(res.status, 201, `sign-in of ${customerId}: ${JSON.stringify(res.data)}`);
  return res.data.token;
}

// Through the page's own form.
async function signUpOnPage(page, customerId, name, password) {
  await page.locator('#auth-form').waitFor();
  await page.locator('#mode-signup').click();
  await page.getByLabel('Customer ID').fill(customerId);
  await page.getByLabel('Your name').fill(name);
  await page.getByLabel('Password').fill(password);
  await page.locator('#auth-submit').click();
  await page.locator('#who-name', { hasText: customerId }).waitFor();
}

async function signInOnPage(page, customerId, password) {
  await page.locator('#auth-form').waitFor();
  await page.locator('#mode-signin').click();
  await page.getByLabel('Customer ID').fill(customerId);
  await page.getByLabel('Password').fill(password);
  await page.locator('#auth-submit').click();
  await page.locator('#who-name', { hasText: customerId }).waitFor();
}

async function storedValues(page, which) {
  return page.evaluate((w) => {
    const store = window[w];
    const out = [];
    for (let i = 0; i < store.length; i++) out.push(store.key(i) + '=' + store.getItem(store.key(i)));
    return out.join('\n');
  }, which);
}

function rentalCard(page, orderId) {
  return page.locator(`#rentals li.rental[data-order-id="${orderId}"]`);
}

async function eventTypes(card) {
  return card.locator('ol.history li').evaluateAll((items) => items.map((li) => li.dataset.eventType));
}

// ---- the test ----

describe('customer web page', () => {
  let system = null;
  let base = process.env.CARSHARE_URL ? process.env.CARSHARE_URL.replace(/\/$/, '') : null;
  let browser = null;          // a persistent context on a fresh user-data-dir
  let userDataDir = null;
  const out = outputDir();
  const shots = [];
  const problems = [];         // console errors, page errors, requests leaving the gateway
  let failed = false;
  const customer = 'kim-' + Math.random().toString(36).slice(2, 8);
  const other = 'lee-' + Math.random().toString(36).slice(2, 8);
  const password = 'correct-horse-' + Math.random().toString(36).slice(2, 8);
  let fleet = [];
  let phoneOrderId = null;

  // Desktop steps: the whole page, from the top (so the sticky top bar is
  // where a customer sees it). Phone steps: the screen as it is scrolled.
  async function shot(page, name, { fullPage = true } = {}) {
    const file = path.join(out, name + '.png');
    if (fullPage) await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: file, fullPage });
    shots.push(file);
    console.log('screenshot: ' + file);
  }

  function watch(page) {
    const origin = new URL(base).origin;
    page.on('console', (msg) => {
      // An HTTP refusal the page handles (402, 409, 503) is logged by chromium
      // as "Failed to load resource"; that is not a fault of the page.
      if (msg.type() === 'error' && !/^Failed to load resource: the server responded/.test(msg.text())) {
        problems.push(`console error: ${msg.text()}`);
      }
    });
    page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
    page.on('request', (req) => {
      const url = req.url();
      if (!url.startsWith('data:') && new URL(url).origin !== origin) problems.push(`request outside the gateway: ${url}`);
    });
  }

  // A failing step marks the run, so the system's logs are kept and shown.
  async function step(fn) {
    try {
      await fn();
    } catch (e) {
      failed = true;
      throw e;
    }
  }

  before(async () => {
    if (!base) {
      system = await startSystem();
      base = system.info.gateway;
      console.log(`system up: gateway ${base}, data ${system.info.dir}`);
    }
    userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'carshare-chromium-'));
    browser = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: DESKTOP,
      locale: 'en-US',
      timezoneId: 'Asia/Seoul',
    });
    browser.setDefaultTimeout(STEP_TIMEOUT_MS);
    const res = await api(base, 'GET', '/cars');
    assert.equal(res.status, 200, `GET /cars through the gateway: ${JSON.stringify(res.data)}`);
    fleet = res.data._embedded.cars;
    assert.ok(fleet.length > 0, 'the demo fleet is empty');
  }, { timeout: 120000 });

  after(async () => {
    if (browser) await browser.close().catch(() => {});
    if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
    if (system) await stopSystem(system, failed);
    console.log(`screenshots (${shots.length}) in ${out}:\n` + shots.map((f) => '  ' + f).join('\n'));
  }, { timeout: 60000 });

  test('desktop: rent, delivered, cancel, refunded, declined card', { timeout: 240000 }, () => step(async () => {
    const page = browser.pages()[0] || await browser.newPage();
    watch(page);
    await page.goto(base + '/');

    // 1. First visit: asked to sign in; a wrong password is refused on the page.
    await page.locator('#auth-form').waitFor();
    assert.equal(await page.locator('#app').isHidden(), true, 'the rental app shows before anyone signed in');
    await shot(page, '01-desktop-welcome');
    await page.getByLabel('Customer ID').fill(customer);
    await page.getByLabel('Password').fill('not-the-password');
    await page.locator('#auth-submit').click();
    await page.locator('#auth-error:not(:empty)').waitFor();
    assert.equal(await page.locator('#app').isHidden(), true, 'an unknown account was let in');
    await signUpOnPage(page, customer, 'Kim Minji', password);
    const session = await storedValues(page, 'sessionStorage');
    assert.ok(/carshare\.session=.*"token":"ey/.test(session), 'the token is not kept for this tab');
    const pageToken = JSON.parse(session.split('carshare.session=')[1].split('\n')[0]).token;
    assert.ok(!(await storedValues(page, 'localStorage')).includes(pageToken), 'the token is in localStorage');
    const mine = await signIn(base, customer, password);
    token = mine;   // for the checks of the later tests

    // 2. The fleet: every model with its name, location, price and availability.
    const car = fleet.find((c) => Number(c.available) >= 2) || fleet.find((c) => Number(c.available) >= 1);
    assert.ok(car, 'no model of the fleet has a car available');
    const cards = page.locator('#fleet label.car');
    await cards.first().waitFor();
    assert.equal(await cards.count(), fleet.length, 'the page does not show every model');
    const card = page.locator(`#fleet label.car[data-car-id="${car.id}"]`);
    const cardText = await card.innerText();
    assert.ok(cardText.includes(car.name), `model card lacks the name ${car.name}: ${cardText}`);
    if (car.location) assert.ok(cardText.includes(car.location), `model card lacks the location: ${cardText}`);
    const price = '₩' + Number(car.dailyPrice).toLocaleString('en-US');
    assert.ok(cardText.includes(price), `model card lacks the price ${price}: ${cardText}`);
    assert.ok(cardText.includes(`${car.available} of ${car.total} available`), `model card lacks availability: ${cardText}`);
    await shot(page, '02-desktop-fleet');

    // 3. Rent one car: approved, with the order id and the amount.
    await card.click();
    await page.getByLabel('Number of cars').fill('1');
    const rent = page.locator('#rent-button');
    assert.equal(await rent.isEnabled(), true, 'the rent button is disabled with a model chosen');
    await rent.click();
    const approved = page.locator('#outcome [data-outcome="approved"]');
    await approved.waitFor();
    const orderId = await approved.locator('[data-order-id]').getAttribute('data-order-id');
    assert.match(orderId || '', /^\d+$/, 'the approval shows no order id');
    const approvedText = await approved.innerText();
    assert.ok(approvedText.includes(price), `approval does not show the amount ${price}: ${approvedText}`);
    await shot(page, '03-desktop-approved');

    // The order exists in the service with the status the page showed.
    const order = await api(base, 'GET', `/orders/${orderId}`, null, mine);
    assert.equal(order.status, 200);
    assert.equal(order.data.customerId, customer);
    assert.equal(Number(order.data.amount), Number(car.dailyPrice));

    // 4. My rentals: the car is delivered (Shipped), with its history.
    const rental = rentalCard(page, orderId);
    await page.locator(`#rentals li.rental[data-order-id="${orderId}"][data-status="Shipped"]`).waitFor();
    await rental.locator('ol.history li[data-event-type="Ordered"]').waitFor();
    await rental.locator('ol.history li[data-event-type="Shipped"]').waitFor();
    assert.ok((await rental.locator('.badge').innerText()).includes('Delivered'), 'badge does not say Delivered');
    assert.ok((await rental.innerText()).includes(price), 'the rental does not show its amount');
    await shot(page, '04-desktop-shipped');

    // 5. Cancel, through the confirmation dialog; "Keep" first changes nothing.
    await rental.getByRole('button', { name: 'Cancel rental' }).click();
    const dialog = page.getByRole('dialog', { name: 'Cancel this rental?' });
    await dialog.waitFor();
    assert.ok((await dialog.innerText()).includes(`#${orderId}`), 'the dialog does not name the order');
    await shot(page, '05-desktop-cancel-dialog', { fullPage: false });   // a modal covers the screen, not the page
    await dialog.getByRole('button', { name: 'Keep rental' }).click();
    await dialog.waitFor({ state: 'hidden' });
    assert.notEqual((await api(base, 'GET', `/orders/${orderId}`, null, mine)).data.status, 'OrderCancelled', 'Keep rental cancelled it');
    await rental.getByRole('button', { name: 'Cancel rental' }).click();
    await dialog.waitFor();
    await dialog.getByRole('button', { name: 'Cancel rental' }).click();

    // 6. Cancelled and refunded, with the whole history.
    // Events arrive in any order: the refund (the furthest step) may come
    // before the delivery's cancellation, so wait for each step of the history.
    await page.locator(`#rentals li.rental[data-order-id="${orderId}"][data-status="PaymentCancelled"]`).waitFor();
    for (const ev of ['Ordered', 'Shipped', 'OrderCancelled', 'DeliveryCanceled', 'PayCancelled']) {
      await rental.locator(`ol.history li[data-event-type="${ev}"]`).waitFor();
    }
    const history = await eventTypes(rental);
    assert.equal(new Set(history).size, history.length, `a step shows twice in the history: ${history}`);
    assert.ok((await rental.locator('.badge').innerText()).includes('refunded'), 'badge does not say refunded');
    assert.equal(await rental.getByRole('button', { name: 'Cancel rental' }).count(), 0, 'a refunded rental still offers Cancel');
    assert.equal((await api(base, 'GET', `/orders/${orderId}`, null, mine)).data.status, 'OrderCancelled');
    await shot(page, '06-desktop-refunded');

    // 7. The declined test card: the server's message, and no rental.
    const before = await page.locator('#rentals li.rental').count();
    await card.click();
    await page.getByLabel('Card number').fill(DECLINED_CARD);
    await rent.click();
    const declined = page.locator('#outcome [data-outcome="declined"]');
    await declined.waitFor();
    const server = (await declined.locator('.server').innerText()).trim();
    assert.ok(server.length > 0, 'the decline shows no reason');
    assert.ok((await declined.innerText()).includes('Payment declined'), 'the decline is not said plainly');
    await shot(page, '07-desktop-declined');
    await page.waitForTimeout(2000);   // time enough for a wrongly created rental to show up
    assert.equal(await page.locator('#rentals li.rental').count(), before, 'a declined card added a rental');
    const orders = await api(base, 'GET', `/orders/search/findByCustomerId?customerId=${encodeURIComponent(customer)}`, null, mine);
    assert.equal(orders.status, 200);
    assert.equal(orders.data._embedded.orders.length, 1, 'the declined card created an order');

    // 8. Sign out: back to the form, the token forgotten.
    await page.locator('#sign-out').click();
    await page.locator('#auth-form').waitFor();
    assert.equal(await page.locator('#app').isHidden(), true, 'the rentals stay on screen after signing out');
    assert.ok(!(await storedValues(page, 'sessionStorage')).includes(pageToken), 'signing out kept the token');
    await shot(page, '08-desktop-signed-out');

    // 9. A second customer sees none of the first one's rentals.
    await signUpOnPage(page, other, 'Lee Jiho', password);
    await page.locator('#rentals-empty').waitFor();
    assert.equal(await page.locator('#rentals li.rental').count(), 0, "the second customer sees the first one's rentals");
    assert.equal(await rentalCard(page, orderId).count(), 0);
    await shot(page, '09-desktop-second-customer');

    // 10. A token the server no longer accepts: back to sign-in, saying why.
    await page.evaluate(() => {
      const s = JSON.parse(sessionStorage.getItem('carshare.session'));
      s.token = s.token.slice(0, -4) + (s.token.endsWith('AAAA') ? 'BBBB' : 'AAAA');   // a broken signature
      sessionStorage.setItem('carshare.session', JSON.stringify(s));
    });
    await page.reload();
    await page.locator('#auth-notice', { hasText: 'session has expired' }).waitFor();
    assert.equal(await page.locator('#app').isHidden(), true, 'a refused token kept the app on screen');
    assert.equal(await page.getByLabel('Customer ID').inputValue(), other, 'the form forgot who was signed in');
    await shot(page, '10-desktop-expired');

    // 11. A token that expires while the page is open (the server still takes it until then):
    // the page signs out by itself when its exp passes, saying so.
    await page.getByLabel('Password').fill(password);
    await page.locator('#auth-submit').click();
    await page.locator('#who-name', { hasText: other }).waitFor();
    await page.evaluate(() => {
      const s = JSON.parse(sessionStorage.getItem('carshare.session'));
      s.exp = Math.floor(Date.now() / 1000) + 3;
      sessionStorage.setItem('carshare.session', JSON.stringify(s));
    });
    await page.reload();
    await page.locator('#who-name', { hasText: other }).waitFor();   // still valid after the reload
    await page.locator('#auth-notice', { hasText: 'session has expired' }).waitFor();
    assert.equal(await page.locator('#app').isHidden(), true, 'an expired token kept the app on screen');
    assert.ok(!(await storedValues(page, 'sessionStorage')).includes('"token"'), 'the expired token was kept');

    assert.deepEqual(problems, [], 'the page had errors or left the gateway');
  }));

  test('phone: signing in again, no overflow, double press rents once, Korean', { timeout: 180000 }, () => step(async () => {
    const page = await browser.newPage();
    watch(page);
    await page.setViewportSize(PHONE);
    await page.goto(base + '/');

    // A new tab does not share the token: sign in, then the earlier rental is there.
    await page.locator('#auth-form').waitFor();
    await signInOnPage(page, customer, password);
    const mine = await signIn(base, customer, password);
    await page.locator('#rentals li.rental[data-status="PaymentCancelled"]').waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone`);
    await shot(page, '11-phone-fleet', { fullPage: false });

    // A double press of Rent: one rental.
    const car = fleet.find((c) => Number(c.available) >= 1);
    await page.locator(`#fleet label.car[data-car-id="${car.id}"]`).click();
    await page.getByLabel('Card number').fill('');
    await page.locator('#rent-button').dblclick();
    const approved = page.locator('#outcome [data-outcome="approved"]');
    await approved.waitFor();
    const orderId = await approved.locator('[data-order-id]').getAttribute('data-order-id');
    await page.locator(`#rentals li.rental[data-order-id="${orderId}"][data-status="Shipped"]`).waitFor();
    await shot(page, '12-phone-approved', { fullPage: false });
    await page.locator('#rentals-section').evaluate((node) => node.scrollIntoView({ block: 'start' }));
    await shot(page, '13-phone-rentals', { fullPage: false });
    const orders = await api(base, 'GET', `/orders/search/findByCustomerId?customerId=${encodeURIComponent(customer)}`, null, mine);
    assert.equal(orders.data._embedded.orders.length, 2, 'a double press rented twice (or not at all)');
    phoneOrderId = orderId;
    assert.equal(await page.locator('#rentals li.rental').count(), 2);

    // Korean labels, remembered across a reload.
    await page.locator('#lang-toggle').click();
    assert.equal(await page.getAttribute('html', 'lang'), 'ko');
    await page.reload();
    await page.locator(`#rentals li.rental[data-order-id="${orderId}"][data-status="Shipped"]`).waitFor();
    assert.equal(await page.getAttribute('html', 'lang'), 'ko');
    assert.equal((await page.locator('#rentals-title').innerText()).trim(), '내 대여');
    assert.ok((await rentalCard(page, orderId).locator('.badge').innerText()).includes('배송 완료'));
    await page.locator('#rentals-section').evaluate((node) => node.scrollIntoView({ block: 'start' }));
    await shot(page, '14-phone-korean', { fullPage: false });

    // Back to English for whoever opens the page next with this profile.
    await page.locator('#lang-toggle').click();
    assert.equal(await page.getAttribute('html', 'lang'), 'en');
    assert.deepEqual(problems, [], 'the page had errors or left the gateway');
  }));

  test('desktop: rent for a period, then return the car', { timeout: 180000 }, () => step(async () => {
    const page = await browser.newPage();
    watch(page);
    await page.setViewportSize(DESKTOP);
    await page.goto(base + '/');
    await signInOnPage(page, customer, password);   // a new tab: the token is per tab

    // Seoul's today (the browser runs in Asia/Seoul, like the company).
    const today = new Intl.DateTimeFormat('en-CA', { timeZone: 'Asia/Seoul' }).format(new Date());
    const plus = (n) => new Date(Date.parse(today + 'T00:00:00Z') + n * 86400000).toISOString().slice(0, 10);
    const start = plus(2), due = plus(5);
    const car = fleet.find((c) => Number(c.available) >= 2) || fleet.find((c) => Number(c.available) >= 1);
    const card = page.locator(`#fleet label.car[data-car-id="${car.id}"]`);
    await card.click();
    await page.getByLabel('Start date').fill(start);
    await page.getByLabel('Days', { exact: true }).fill('3');
    await page.getByLabel('Number of cars').fill('1');

    // Availability for these dates, and the price of three days, before paying.
    const free = await api(base, 'GET', `/cars/${car.id}?from=${start}&to=${due}`);
    assert.equal(free.status, 200);
    await card.locator('.car-avail', { hasText: `${free.data.available} of ${car.total} free on these dates` }).waitFor();
    const amount = 3 * Number(car.dailyPrice);
    const price = '₩' + amount.toLocaleString('en-US');
    await page.locator('#total', { hasText: price }).waitFor();
    assert.equal((await page.locator('#total-label').innerText()).trim(), 'Total for 3 days');
    assert.ok((await page.locator('#dates-hint').innerText()).includes('3 days'), 'the hint does not say 3 days');
    assert.ok((await page.locator('#rent-button').innerText()).includes(price), 'the button does not show the price');
    await shot(page, '15-desktop-period-checkout');

    await page.locator('#rent-button').click();
    const approved = page.locator('#outcome [data-outcome="approved"]');
    await approved.waitFor();
    const orderId = await approved.locator('[data-order-id]').getAttribute('data-order-id');
    assert.ok((await approved.innerText()).includes(price), 'the approval does not show the period\'s amount');
    const order = await api(base, 'GET', `/orders/${orderId}`);
    assert.equal(order.data.from, start);
    assert.equal(order.data.to, due);
    assert.equal(order.data.days, 3);
    assert.equal(Number(order.data.amount), amount);

    // My rentals: the period, delivered, then returned through the dialog.
    const rental = rentalCard(page, orderId);
    await page.locator(`#rentals li.rental[data-order-id="${orderId}"][data-status="Shipped"]`).waitFor();
    assert.ok((await rental.locator('.rental-period').innerText()).includes('3 days'), 'the rental does not show its period');
    await rental.getByRole('button', { name: 'Return the car' }).click();
    const dialog = page.getByRole('dialog', { name: 'Return the car?' });
    await dialog.waitFor();
    assert.ok((await dialog.innerText()).includes(`#${orderId}`), 'the dialog does not name the order');
    await shot(page, '16-desktop-return-dialog', { fullPage: false });
    await dialog.getByRole('button', { name: 'Not yet' }).click();
    await dialog.waitFor({ state: 'hidden' });
    assert.notEqual((await api(base, 'GET', `/orders/${orderId}`)).data.status, 'Returned', 'Not yet returned it');
    await rental.getByRole('button', { name: 'Return the car' }).click();
    await dialog.waitFor();
    await dialog.getByRole('button', { name: 'Return the car' }).click();

    await page.locator(`#rentals li.rental[data-order-id="${orderId}"][data-status="Returned"]`).waitFor();
    await rental.locator('ol.history li[data-event-type="Returned"]').waitFor();
    assert.ok((await rental.locator('.badge').innerText()).includes('Returned'), 'badge does not say Returned');
    assert.equal(await rental.getByRole('button', { name: 'Return the car' }).count(), 0, 'a returned rental still offers Return');
    assert.equal(await rental.getByRole('button', { name: 'Cancel rental' }).count(), 0, 'a returned rental still offers Cancel');
    assert.equal((await api(base, 'GET', `/orders/${orderId}`)).data.status, 'Returned');
    // Its days are free again (it was returned before it started).
    const after = await api(base, 'GET', `/cars/${car.id}?from=${start}&to=${due}`);
    assert.equal(after.data.available, free.data.available);
    await shot(page, '17-desktop-returned');
    assert.deepEqual(problems, [], 'the page had errors or left the gateway');
  }));

  test('staff: every rental with payment and delivery, cancel any', { timeout: 180000 }, () => step(async () => {
    let adminPassword = process.env.CARSHARE_ADMIN_PASSWORD;
    if (!adminPassword && system) {
      adminPassword = fs.readFileSync(path.join(system.info.dir, 'data', 'secrets', 'admin-password'), 'utf8').trim();
    }
    assert.ok(adminPassword, 'no admin password (set CARSHARE_ADMIN_PASSWORD with CARSHARE_URL)');
    assert.ok(phoneOrderId, 'the phone test made no rental to cancel');
    const page = await browser.newPage();
    watch(page);
    await page.goto(base + '/');
    await signInOnPage(page, 'admin', adminPassword);
    await page.locator('#who-role', { hasText: 'Staff' }).waitFor();
    assert.equal(await page.locator('#fleet-section').isVisible(), false, 'staff are offered the fleet');
    assert.equal((await page.locator('#rentals-title').innerText()).trim(), 'All rentals');

    // The customer's rental, with whose it is and where payment and delivery stand.
    const rental = rentalCard(page, phoneOrderId);
    await page.locator(`#rentals li.rental[data-order-id="${phoneOrderId}"][data-status="Shipped"]`).waitFor();
    assert.equal((await rental.locator('[data-fact="customer"] dd').innerText()).trim(), customer);
    assert.equal((await rental.locator('[data-fact="payment"] dd').innerText()).trim(), 'paid');
    assert.equal((await rental.locator('[data-fact="delivery"] dd').innerText()).trim(), 'delivered');
    await shot(page, '18-staff-view');

    // Staff cancel it: refunded, and the customer's own view says so.
    await rental.getByRole('button', { name: 'Cancel rental' }).click();
    const dialog = page.getByRole('dialog', { name: 'Cancel this rental?' });
    await dialog.waitFor();
    await dialog.getByRole('button', { name: 'Cancel rental' }).click();
    await page.locator(`#rentals li.rental[data-order-id="${phoneOrderId}"][data-status="PaymentCancelled"]`).waitFor();
    await rental.locator('[data-fact="payment"] dd', { hasText: 'refunded' }).waitFor();
    await rental.locator('[data-fact="delivery"] dd', { hasText: 'cancelled' }).waitFor();
    const mine = await signIn(base, customer, password);
    assert.equal((await api(base, 'GET', `/orders/${phoneOrderId}`, null, mine)).data.status, 'OrderCancelled');
    await shot(page, '19-staff-cancelled');
    assert.deepEqual(problems, [], 'the page had errors or left the gateway');
  }));
});
