// 1 — hot path throughput: ramping VUs, each appending to its own context.
//
// Knobs (env):
//   MAX_VUS         peak virtual users (default 20)
//   RAMP_UP         ramp-up duration (default 15s)
//   STEADY          duration at MAX_VUS (default 45s)
//   RAMP_DOWN       ramp-down duration (default 10s)
//   PIPELINE_DEPTH  appends per iteration, one after another (default 5)
//   PAYLOAD_SIZE    text bytes per message (default 200)
//   API_URL / CLUSTER_NODES / API_KEY   see lib.js
// Checks: every append is a 201 and its seq is greater than the VU's previous one.
// Thresholds: append_latency p95 < 40 ms, p99 < 120 ms; checks > 99%.
import { check } from 'k6';
import { Trend } from 'k6/metrics';
import * as api from './lib.js';

const MAX_VUS = parseInt(__ENV.MAX_VUS || '20', 10);
const PIPELINE_DEPTH = parseInt(__ENV.PIPELINE_DEPTH || '5', 10);
const PAYLOAD = api.text(parseInt(__ENV.PAYLOAD_SIZE || '200', 10));

const appendLatency = new Trend('append_latency', true);

export const options = {
  scenarios: {
    hot_path: {
      executor: 'ramping-vus',
      startVUs: 1,
      stages: [
        { duration: __ENV.RAMP_UP || '15s', target: MAX_VUS },
        { duration: __ENV.STEADY || '45s', target: MAX_VUS },
        { duration: __ENV.RAMP_DOWN || '10s', target: 0 },
      ],
      gracefulRampDown: '5s',
    },
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'p(99.9)', 'max'],
  thresholds: {
    append_latency: ['p(95)<40', 'p(99)<120'],
    checks: ['rate>0.99'],
  },
};

export function setup() {
  api.waitReady(60);
  return { run: api.runId() };
}

let lastSeq = 0;
let created = false;

export default function (data) {
  const id = `hot-${data.run}-${__VU}`;
  if (!created) {
    const r = api.putContext(id);
    check(r, { 'context created': (x) => x.status === 201 || x.status === 200 });
    created = true;
  }
  for (let i = 0; i < PIPELINE_DEPTH; i++) {
    const r = api.append(id, api.message('user', PAYLOAD));
    appendLatency.add(r.timings.duration);
    const body = r.status === 201 ? api.json(r) : null;
    const seq = body ? body.seq : -1;
    check(r, {
      'append 201': (x) => x.status === 201,
      'seq strictly increasing': () => seq > lastSeq,
    });
    if (seq > 0) lastSeq = seq;
  }
}
