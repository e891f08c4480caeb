// 4 — durability cadence: sustained appends over many contexts with periodic window
// reads, then a real durability check: for every context, the server's last_seq equals
// the number of appends that got a 201.
//
// Where the counts live: k6's teardown only sees what setup returned, not what VUs
// counted. So each VU runs exactly one iteration (per-vu-iterations) that loops for
// DURATION over the contexts it owns, counting its 201s, and then checks those same
// contexts itself — the counts never leave the VU that made them.
//
// Knobs (env):
//   SESSION_COUNT   contexts (default 200), split over the VUs
//   VUS             virtual users (default 20)
//   DURATION        seconds of appending (default 45)
//   WINDOW_EVERY    a window read after every N appends of a VU (default 10)
//   PAYLOAD_SIZE    text bytes per message (default 200)
//   API_URL / CLUSTER_NODES / API_KEY   see lib.js
// Thresholds: append_latency p95 < 120 ms, p99 < 200 ms; durability_check rate == 1.
import { check } from 'k6';
import { Rate, Trend, Counter } from 'k6/metrics';
import * as api from './lib.js';

const SESSIONS = parseInt(__ENV.SESSION_COUNT || '200', 10);
const VUS = parseInt(__ENV.VUS || '20', 10);
const DURATION_S = parseInt(__ENV.DURATION || '45', 10);
const WINDOW_EVERY = parseInt(__ENV.WINDOW_EVERY || '10', 10);
const PAYLOAD = api.text(parseInt(__ENV.PAYLOAD_SIZE || '200', 10));

const appendLatency = new Trend('append_latency', true);
const windowLatency = new Trend('window_latency', true);
const durability = new Rate('durability_check');
const acked = new Counter('appends_acknowledged');

export const options = {
  scenarios: {
    cadence: {
      executor: 'per-vu-iterations',
      vus: VUS,
      iterations: 1,
      maxDuration: `${DURATION_S + 120}s`,
    },
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'p(99.9)', 'max'],
  thresholds: {
    append_latency: ['p(95)<120', 'p(99)<200'],
    durability_check: ['rate==1'],
  },
};

export function setup() {
  api.waitReady(60);
  const run = api.runId();
  for (let s = 0; s < SESSIONS; s++) {
    const r = api.putContext(`dur-${run}-${s}`);
    if (r.status !== 201 && r.status !== 200) throw new Error(`PUT: ${r.status} ${r.body}`);
  }
  return { run };
}

export default function (data) {
  const mine = [];
  for (let s = __VU - 1; s < SESSIONS; s += VUS) mine.push(`dur-${data.run}-${s}`);
  if (mine.length === 0) return;
  const counts = {};
  for (const id of mine) counts[id] = 0;
  const end = Date.now() + DURATION_S * 1000;
  let n = 0;
  while (Date.now() < end) {
    const id = mine[n % mine.length];
    const r = api.append(id, api.message('user', PAYLOAD));
    appendLatency.add(r.timings.duration);
    if (r.status === 201) {
      counts[id] += 1;
      acked.add(1);
    }
    n += 1;
    if (n % WINDOW_EVERY === 0) {
      const w = api.window(id);
      windowLatency.add(w.timings.duration);
      check(w, { 'window 200': (x) => x.status === 200 });
    }
  }
  // The check, with the counts right here.
  for (const id of mine) {
    const r = api.getContext(id);
    const body = r.status === 200 ? api.json(r) : null;
    const ok = body !== null && body.last_seq === counts[id];
    durability.add(ok);
    check(r, { 'last_seq == appends acknowledged': () => ok });
    if (!ok) console.error(`${id}: server last_seq ${body && body.last_seq}, acknowledged ${counts[id]}`);
  }
}
