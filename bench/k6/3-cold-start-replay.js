// 3 — cold-start replay: build a backlog, then replay whole histories while writes go on.
//
// Knobs (env):
//   BACKLOG_SESSIONS  contexts with a backlog (default 20)
//   BACKLOG_SIZE      messages per backlog context, and per replay (default 1000)
//   PAYLOAD_SIZE      text bytes per message (default 200)
//   REPLAY_VUS        virtual users replaying (default 10)
//   WRITE_VUS         virtual users appending to fresh contexts meanwhile (default 10)
//   DURATION          duration of the replay phase (default 45s)
//   API_URL / CLUSTER_NODES / API_KEY   see lib.js
// Thresholds: replay_latency p95 < 500 ms, active_write_latency p95 < 200 ms; every replay
// returns BACKLOG_SIZE messages.
import http from 'k6/http';
import { check } from 'k6';
import { Trend } from 'k6/metrics';
import * as api from './lib.js';

const SESSIONS = parseInt(__ENV.BACKLOG_SESSIONS || '20', 10);
const SIZE = parseInt(__ENV.BACKLOG_SIZE || '1000', 10);
const PAYLOAD = api.text(parseInt(__ENV.PAYLOAD_SIZE || '200', 10));
const DURATION = __ENV.DURATION || '45s';

const replayLatency = new Trend('replay_latency', true);
const writeLatency = new Trend('active_write_latency', true);

export const options = {
  setupTimeout: '15m',
  scenarios: {
    replay: {
      executor: 'constant-vus',
      vus: parseInt(__ENV.REPLAY_VUS || '10', 10),
      duration: DURATION,
      exec: 'replayHistory',
    },
    writes: {
      executor: 'constant-vus',
      vus: parseInt(__ENV.WRITE_VUS || '10', 10),
      duration: DURATION,
      exec: 'activeWrites',
    },
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'p(99.9)', 'max'],
  thresholds: {
    replay_latency: ['p(95)<500'],
    active_write_latency: ['p(95)<200'],
    'checks{check:full replay}': ['rate>0.99'],
  },
};

export function setup() {
  api.waitReady(60);
  const run = api.runId();
  const body = JSON.stringify({ message: api.message('user', PAYLOAD) });
  const headers = { 'Content-Type': 'application/json' };
  if (__ENV.API_KEY) headers.Authorization = `Bearer ${__ENV.API_KEY}`;
  for (let s = 0; s < SESSIONS; s++) {
    const id = `cold-${run}-${s}`;
    const r = api.putContext(id, { token_budget: 10000000 });
    if (r.status !== 201 && r.status !== 200) throw new Error(`PUT ${id}: ${r.status} ${r.body}`);
    // 50 appends in flight at a time; each is durable before the next batch.
    for (let done = 0; done < SIZE; ) {
      const n = Math.min(50, SIZE - done);
      const reqs = [];
      for (let i = 0; i < n; i++) {
        reqs.push(['POST', `${api.base()}/contexts/${id}/messages`, body, { headers, tags: { name: 'backlog' } }]);
      }
      const res = http.batch(reqs);
      for (const x of res) {
        if (x.status !== 201) throw new Error(`backlog append to ${id}: ${x.status} ${x.body}`);
      }
      done += n;
    }
  }
  return { run };
}

export function replayHistory(data) {
  const id = `cold-${data.run}-${Math.floor(Math.random() * SESSIONS)}`;
  const r = api.replay(id, -SIZE, SIZE);
  replayLatency.add(r.timings.duration);
  const body = r.status === 200 ? api.json(r) : null;
  check(r, { 'full replay': () => body !== null && body.messages.length === SIZE });
}

let created = false;

export function activeWrites(data) {
  const id = `cold-live-${data.run}-${__VU}`;
  if (!created) {
    api.putContext(id);
    created = true;
  }
  const r = api.append(id, api.message('user', PAYLOAD));
  writeLatency.add(r.timings.duration);
  check(r, { 'append 201': (x) => x.status === 201 });
}
