// The Rinha de Backend 2025 final test, written from the contest's rules (../shared/rinha-2025.md,
// sections 4 and 5) for k6 v1.1.0. Run by `rinha contest`; by hand:
//   PROFILE=smoke TARGET=http://127.0.0.1:9999 DEFAULT_URL=http://127.0.0.1:8001 \
//   FALLBACK_URL=http://127.0.0.1:8002 RESULT_FILE=out.json k6 run contest/k6/rinha.js
//
// Profiles: final (300 s, 1 -> 603 VUs, the stage table as is), smoke (60 s, 100 VUs, the same
// stages compressed), tiny (15 s, 20 VUs: for the harness's own tests).
// The score is computed in exact integer arithmetic by ./score.js; `rinha contest` recomputes it
// in Rust from the raw figures of the JSON written here and requires the same cents.
// Caution: setup changes the processors' token, delay and failure mode and purges them; point
// DEFAULT_URL/FALLBACK_URL only at processors of your own run.
import http from 'k6/http';
import { sleep } from 'k6';
import { Counter } from 'k6/metrics';
import exec from 'k6/execution';
import { cents, scaled, scoreOf } from './score.js';

const PROFILES = {
  final: { seconds: 300, vus: 603, checkEvery: 10 },
  smoke: { seconds: 60, vus: 100, checkEvery: 10 },
  tiny: { seconds: 15, vus: 20, checkEvery: 3 },
};
const PROFILE = __ENV.PROFILE || 'smoke';
const P = PROFILES[PROFILE];
if (!P) {
  throw new Error(`unknown PROFILE ${PROFILE}: final, smoke or tiny`);
}
const TARGET = __ENV.TARGET || 'http://127.0.0.1:9999';
const DEFAULT_URL = __ENV.DEFAULT_URL || 'http://127.0.0.1:8001';
const FALLBACK_URL = __ENV.FALLBACK_URL || 'http://127.0.0.1:8002';
const INITIAL_TOKEN = __ENV.INITIAL_TOKEN || '123';
const AMOUNT = __ENV.AMOUNT || '20.05';
const SCALE = P.seconds / 300;

// [second of the final, default delay, default failing, fallback delay, fallback failing]
const STAGES = [
  [0, 0, false, 0, false],
  [30, 1000, false, 0, false],
  [60, 500, false, 0, false],
  [90, 2000, true, 1000, false],
  [120, 5000, true, 5, false],
  [150, 0, false, 5, true],
  [180, 100, false, 5, false],
  [210, 50, false, 0, false],
  [240, 103, false, 10, false],
  [270, 2000, false, 0, false],
];

const succeeded = new Counter('payments_succeeded');
const failed = new Counter('payments_failed');
const inconsistencies = new Counter('inconsistencies');
const checks = new Counter('consistency_checks');
const finalDefaultCount = new Counter('final_default_requests');
const finalDefaultCents = new Counter('final_default_cents');
const finalFallbackCount = new Counter('final_fallback_requests');
const finalFallbackCents = new Counter('final_fallback_cents');
const finalDefaultFeeBp = new Counter('final_default_fee_bp');
const finalFallbackFeeBp = new Counter('final_fallback_fee_bp');
const finalSummaryErrors = new Counter('final_summary_errors');
// Admin calls to the processors (mode changes, consistency checks) that were not answered 200:
// the run's timeline or checks are then not the contest's, and `rinha contest` refuses it.
const adminErrors = new Counter('admin_errors');

export const options = {
  scenarios: {
    payments: {
      executor: 'ramping-vus',
      startVUs: 1,
      stages: [{ duration: `${P.seconds}s`, target: P.vus }],
      gracefulRampDown: '0s',
      exec: 'payment',
    },
    modes: {
      executor: 'per-vu-iterations',
      vus: 1,
      iterations: 1,
      maxDuration: `${P.seconds + 5}s`,
      exec: 'modes',
    },
    // One check every checkEvery seconds of the test, on the clock (not drifting by the time
    // each check takes): at 10, 20, ..., 300 s in the final (30 checks; the 1 s beyond the
    // last one keeps the count from depending on timer jitter at the boundary).
    consistency: {
      executor: 'constant-arrival-rate',
      rate: 1,
      timeUnit: `${P.checkEvery}s`,
      startTime: `${P.checkEvery}s`,
      duration: `${P.seconds - P.checkEvery + 1}s`,
      preAllocatedVUs: 2,
      gracefulStop: '5s',
      exec: 'consistency',
    },
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)', 'count'],
  thresholds: {
    // Declared so that the summary carries the sub-metric the score's p99 is taken from.
    'http_req_duration{expected_response:true}': ['p(99)<1000000'],
  },
  setupTimeout: '30s',
  teardownTimeout: '60s',
};

function uuid() {
  const h = '0123456789abcdef';
  let s = '';
  for (let i = 0; i < 36; i++) {
    if (i === 8 || i === 13 || i === 18 || i === 23) {
      s += '-';
    } else if (i === 14) {
      s += '4';
    } else if (i === 19) {
      s += h[8 + Math.floor(Math.random() * 4)];
    } else {
      s += h[Math.floor(Math.random() * 16)];
    }
  }
  return s;
}

function admin(url, token, method, path, body) {
  return http.request(method, `${url}${path}`, body === undefined ? null : JSON.stringify(body), {
    headers: { 'Content-Type': 'application/json', 'X-Rinha-Token': token },
    timeout: '10s',
  });
}

// An admin call of the setup that must succeed, or the test stops here with the reason.
function mustAdmin(url, token, method, path, body, want) {
  const res = admin(url, token, method, path, body);
  if (res.status !== want) {
    const why = res.status === 401
      ? ': the processor no longer takes the token, so an earlier run configured it; restart the processors'
      : '';
    exec.test.abort(`setup: ${method} ${url}${path} answered ${res.status}, not ${want}${why}`);
  }
}

export function setup() {
  const token = `t${Math.floor(Math.random() * 1e12)}`;
  for (const url of [DEFAULT_URL, FALLBACK_URL]) {
    mustAdmin(url, INITIAL_TOKEN, 'PUT', '/admin/configurations/token', { token }, 204);
    mustAdmin(url, token, 'PUT', '/admin/configurations/delay', { delay: 0 }, 200);
    mustAdmin(url, token, 'PUT', '/admin/configurations/failure', { failure: false }, 200);
    mustAdmin(url, token, 'POST', '/admin/purge-payments', undefined, 200);
  }
  http.post(`${TARGET}/purge-payments`, null, { timeout: '10s' });
  return { token, start: Date.now() };
}

export function payment() {
  const body = `{"correlationId":"${uuid()}","amount":${AMOUNT}}`;
  const res = http.post(`${TARGET}/payments`, body, {
    headers: { 'Content-Type': 'application/json' },
    timeout: '1500ms',
    tags: { name: 'payments' },
  });
  if ([200, 201, 202, 204].includes(res.status)) {
    succeeded.add(1);
  } else {
    failed.add(1);
  }
  sleep(1);
}

export function modes(data) {
  for (const [second, dDelay, dFail, fDelay, fFail] of STAGES) {
    const at = data.start + second * SCALE * 1000;
    const wait = (at - Date.now()) / 1000;
    if (wait > 0) {
      sleep(wait);
    }
    if (Date.now() > data.start + P.seconds * 1000) {
      return;
    }
    for (const [url, path, body] of [
      [DEFAULT_URL, '/admin/configurations/delay', { delay: dDelay }],
      [DEFAULT_URL, '/admin/configurations/failure', { failure: dFail }],
      [FALLBACK_URL, '/admin/configurations/delay', { delay: fDelay }],
      [FALLBACK_URL, '/admin/configurations/failure', { failure: fFail }],
    ]) {
      const res = admin(url, data.token, 'PUT', path, body);
      if (res.status !== 200) {
        adminErrors.add(1);
        console.error(`modes: PUT ${url}${path} answered ${res.status}`);
      }
    }
  }
}

export function consistency(data) {
  const now = Date.now();
  const q = `?from=${new Date(now - 15000).toISOString()}&to=${new Date(now - 2000).toISOString()}`;
  const [ours, d, f] = http.batch([
    ['GET', `${TARGET}/payments-summary${q}`, null, { timeout: '5s' }],
    ['GET', `${DEFAULT_URL}/admin/payments-summary${q}`, null, { headers: { 'X-Rinha-Token': data.token }, timeout: '5s' }],
    ['GET', `${FALLBACK_URL}/admin/payments-summary${q}`, null, { headers: { 'X-Rinha-Token': data.token }, timeout: '5s' }],
  ]);
  checks.add(1);
  if (d.status !== 200 || f.status !== 200) {
    adminErrors.add(1);
    console.error(`consistency: processors' summaries answered ${d.status} and ${f.status}`);
  }
  try {
    const o = ours.json();
    const diff = Math.abs(o.default.totalRequests - d.json().totalRequests)
      + Math.abs(o.fallback.totalRequests - f.json().totalRequests);
    if (!Number.isFinite(diff)) {
      throw new Error('a count is missing');
    }
    inconsistencies.add(diff);
  } catch (e) {
    // An unreadable answer is an inconsistency too: the check could not agree.
    inconsistencies.add(1);
  }
}

export function teardown(data) {
  const now = Date.now();
  const q = `?from=${new Date(now - 360000).toISOString()}&to=${new Date(now).toISOString()}`;
  for (const [url, count, amount, fee] of [
    [DEFAULT_URL, finalDefaultCount, finalDefaultCents, finalDefaultFeeBp],
    [FALLBACK_URL, finalFallbackCount, finalFallbackCents, finalFallbackFeeBp],
  ]) {
    const res = admin(url, data.token, 'GET', `/admin/payments-summary${q}`);
    try {
      if (res.status !== 200) {
        throw new Error(`status ${res.status}`);
      }
      const s = res.json();
      if (!Number.isFinite(s.totalRequests)) {
        throw new Error('no totalRequests');
      }
      count.add(s.totalRequests);
      amount.add(cents(s.totalAmount));
      fee.add(scaled(s.feePerTransaction, 4));
    } catch (e) {
      // No figures: the score counts nothing from this processor, and the result says why.
      finalSummaryErrors.add(1);
    }
  }
}

function count(data, name) {
  const m = data.metrics[name];
  return m ? m.values.count : 0;
}

export function handleSummary(data) {
  const ok = data.metrics['http_req_duration{expected_response:true}'];
  const p99 = ok ? ok.values['p(99)'] : 0;
  const inc = count(data, 'inconsistencies');
  const dCount = count(data, 'final_default_requests');
  const fCount = count(data, 'final_fallback_requests');
  const dCents = count(data, 'final_default_cents');
  const fCents = count(data, 'final_fallback_cents');
  const dFee = count(data, 'final_default_fee_bp') / 10000;
  const fFee = count(data, 'final_fallback_fee_bp') / 10000;
  const s = scoreOf({
    defaultCents: dCents,
    fallbackCents: fCents,
    defaultFee: dFee,
    fallbackFee: fFee,
    p99Ms: p99,
    inconsistencies: inc,
  });
  const successes = count(data, 'payments_succeeded');
  const result = {
    profile: PROFILE,
    target: TARGET,
    score: s.scoreCents / 100,
    score_cents: s.scoreCents,
    p99_ms: p99,
    p99_ms_rounded: s.p99Hundredths / 100,
    bonus: s.bonusHundredths / 100,
    fine: s.fineHundredths / 100,
    inconsistencies: inc,
    consistency_checks: count(data, 'consistency_checks'),
    successes,
    failures: count(data, 'payments_failed'),
    lag: successes - (dCount + fCount),
    default_requests: dCount,
    default_amount_cents: dCents,
    default_fee: dFee,
    fallback_requests: fCount,
    fallback_amount_cents: fCents,
    fallback_fee: fFee,
    gross_amount: s.grossCents / 100,
    total_fees: s.feeCents / 100,
    net_amount: s.netCents / 100,
    final_summary_errors: count(data, 'final_summary_errors'),
    admin_errors: count(data, 'admin_errors'),
    http_requests: data.metrics.http_reqs ? data.metrics.http_reqs.values.count : 0,
    successful_http_requests: ok ? ok.values.count : 0,
  };
  const out = { stdout: `\n${JSON.stringify(result, null, 2)}\n` };
  if (__ENV.RESULT_FILE) {
    out[__ENV.RESULT_FILE] = JSON.stringify(result, null, 2);
  }
  return out;
}
