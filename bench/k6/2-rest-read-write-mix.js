// 2 — REST read/write mix: each iteration appends, reads the LLM window, appends,
// and replays the last 50 messages.
//
// Knobs (env):
//   VUS           virtual users (default 50)
//   DURATION      test duration (default 45s)
//   PAYLOAD_SIZE  text bytes per message (default 1024)
//   API_URL / CLUSTER_NODES / API_KEY   see lib.js
// Thresholds: http_req_failed < 1%, write_latency p95 < 120 ms, window_latency p95 < 160 ms.
import { check } from 'k6';
import { Trend } from 'k6/metrics';
import * as api from './lib.js';

const PAYLOAD = api.text(parseInt(__ENV.PAYLOAD_SIZE || '1024', 10));

const writeLatency = new Trend('write_latency', true);
const windowLatency = new Trend('window_latency', true);
const replayLatency = new Trend('replay_latency', true);

export const options = {
  scenarios: {
    mix: {
      executor: 'constant-vus',
      vus: parseInt(__ENV.VUS || '50', 10),
      duration: __ENV.DURATION || '45s',
    },
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'p(99.9)', 'max'],
  thresholds: {
    http_req_failed: ['rate<0.01'],
    write_latency: ['p(95)<120'],
    window_latency: ['p(95)<160'],
  },
};

export function setup() {
  api.waitReady(60);
  return { run: api.runId() };
}

let created = false;

export default function (data) {
  const id = `mix-${data.run}-${__VU}`;
  if (!created) {
    check(api.putContext(id, { token_budget: 64000, policy: { strategy: 'last_n', config: { limit: 200 } } }), {
      'context created': (r) => r.status === 201 || r.status === 200,
    });
    created = true;
  }
  let r = api.append(id, api.message('user', PAYLOAD));
  writeLatency.add(r.timings.duration);
  check(r, { 'append 201': (x) => x.status === 201 });

  r = api.window(id);
  windowLatency.add(r.timings.duration);
  check(r, { 'window 200': (x) => x.status === 200 });

  r = api.append(id, api.message('assistant', PAYLOAD));
  writeLatency.add(r.timings.duration);
  check(r, { 'append 201': (x) => x.status === 201 });

  r = api.replay(id, -50, 50);
  replayLatency.add(r.timings.duration);
  check(r, { 'replay 200': (x) => x.status === 200 });
}
