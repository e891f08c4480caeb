// 5 — live streams: WebSocket subscribers watch contexts while writers append to them.
// Each watcher connects with cursor=0 (a replay of what is already there, then live),
// answers the server's pings, and checks that versions strictly increase with no gap;
// the writers put the send time (ms) in each message, so a watcher measures the
// append-sent → event-received latency (same machine, same clock).
//
// Knobs (env):
//   CONTEXTS      contexts watched and appended to (default 20)
//   WATCHERS      WebSocket subscribers (default 100), watcher i on context i mod CONTEXTS
//   RATE          appends per second, in all (default 200)
//   DURATION      seconds (default 30)
//   PAYLOAD_SIZE  text bytes per message (default 200)
//   API_URL / CLUSTER_NODES / API_KEY   see lib.js (watchers and writers round-robin over nodes)
// Thresholds: stream_order_violations == 0, stream_gaps == 0, stream_delivery p99 < 100 ms,
// append_latency p99 < 200 ms.
import ws from 'k6/ws';
import { check } from 'k6';
import { Trend, Counter } from 'k6/metrics';
import * as api from './lib.js';

const CONTEXTS = parseInt(__ENV.CONTEXTS || '20', 10);
const WATCHERS = parseInt(__ENV.WATCHERS || '100', 10);
const RATE = parseInt(__ENV.RATE || '200', 10);
const DURATION_S = parseInt(__ENV.DURATION || '30', 10);
const PAD = api.text(parseInt(__ENV.PAYLOAD_SIZE || '200', 10));

const delivery = new Trend('stream_delivery', true);
const appendLatency = new Trend('append_latency', true);
const events = new Counter('stream_events');
const violations = new Counter('stream_order_violations');
const gaps = new Counter('stream_gaps');

export const options = {
  scenarios: {
    watchers: {
      executor: 'per-vu-iterations',
      vus: WATCHERS,
      iterations: 1,
      maxDuration: `${DURATION_S + 60}s`,
      exec: 'watch',
    },
    writers: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: `${DURATION_S}s`,
      startTime: '2s',
      preAllocatedVUs: 20,
      maxVUs: 100,
      exec: 'write',
    },
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'p(99.9)', 'max'],
  thresholds: {
    stream_order_violations: ['count==0'],
    stream_gaps: ['count==0'],
    stream_delivery: ['p(99)<100'],
    append_latency: ['p(99)<200'],
  },
};

export function setup() {
  api.waitReady(60);
  const run = api.runId();
  for (let c = 0; c < CONTEXTS; c++) {
    const r = api.putContext(`live-${run}-${c}`);
    if (r.status !== 201 && r.status !== 200) throw new Error(`PUT: ${r.status} ${r.body}`);
  }
  return { run };
}

export function watch(data) {
  const id = `live-${data.run}-${(__VU - 1) % CONTEXTS}`;
  const url = `${api.base().replace(/^http/, 'ws')}/contexts/${encodeURIComponent(id)}/stream?cursor=0`;
  const headers = __ENV.API_KEY ? { Authorization: `Bearer ${__ENV.API_KEY}` } : {};
  let last = 0;
  const res = ws.connect(url, { headers }, (socket) => {
    socket.on('message', (raw) => {
      const e = JSON.parse(raw);
      if (e.type === 'ping') {
        socket.send('{"type":"pong"}');
        return;
      }
      if (e.type === 'gap') {
        gaps.add(1);
        return;
      }
      if (e.version !== undefined) {
        if (e.version !== last + 1) violations.add(1);
        last = e.version;
      }
      if (e.type === 'message') {
        events.add(1);
        const m = /^t(\d+)-/.exec(e.message.parts[0].text || '');
        if (m) delivery.add(Date.now() - parseInt(m[1], 10));
      }
    });
    socket.setTimeout(() => socket.close(), (DURATION_S + 5) * 1000);
  });
  check(res, { 'upgraded (101)': (r) => r && r.status === 101 });
}

export function write(data) {
  const id = `live-${data.run}-${Math.floor(Math.random() * CONTEXTS)}`;
  const r = api.append(id, api.message('user', `t${Date.now()}-${PAD}`));
  appendLatency.add(r.timings.duration);
  check(r, { 'append 201': (x) => x.status === 201 });
}
