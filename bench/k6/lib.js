// Shared helpers for the FleetLM k6 scenarios.
//
// Target: API_URL (default http://localhost:4000/v1), or CLUSTER_NODES — a comma-
// separated list of node base URLs (with or without /v1, e.g. the output of
// `bench/cluster.sh up 3`) used round-robin, request by request.
// Nothing here talks to any host but those.
import http from 'k6/http';
import { sleep } from 'k6';

function withV1(u) {
  u = u.trim().replace(/\/+$/, '');
  return u.endsWith('/v1') ? u : `${u}/v1`;
}

export const NODES = (__ENV.CLUSTER_NODES || '')
  .split(',')
  .map((s) => s.trim())
  .filter((s) => s.length > 0)
  .map(withV1);
if (NODES.length === 0) NODES.push(withV1(__ENV.API_URL || 'http://localhost:4000/v1'));

let next = 0;
/** The next node's `/v1` base URL (round-robin). */
export function base() {
  next = (next + 1) % NODES.length;
  return NODES[next];
}

const JSON_HEADERS = { 'Content-Type': 'application/json' };
const KEY = __ENV.API_KEY ? { Authorization: `Bearer ${__ENV.API_KEY}` } : {};

function params(extraHeaders, tags) {
  return { headers: Object.assign({}, JSON_HEADERS, KEY, extraHeaders || {}), tags: tags || {} };
}

export function text(bytes) {
  return 'x'.repeat(Math.max(1, bytes));
}

export function message(role, body) {
  return { role, parts: [{ type: 'text', text: body }] };
}

export function putContext(id, cfg) {
  const body = Object.assign({ token_budget: 100000 }, cfg || {});
  return http.put(`${base()}/contexts/${encodeURIComponent(id)}`, JSON.stringify(body), params(null, { name: 'put_context' }));
}

export function getContext(id, opts) {
  const q = opts && opts.local ? '?consistency=local' : '';
  return http.get(`${base()}/contexts/${encodeURIComponent(id)}${q}`, params(null, { name: 'get_context' }));
}

export function deleteContext(id) {
  return http.del(`${base()}/contexts/${encodeURIComponent(id)}`, null, params(null, { name: 'delete_context' }));
}

export function patchMetadata(id, metadata) {
  return http.patch(`${base()}/contexts/${encodeURIComponent(id)}/metadata`, JSON.stringify({ metadata }), params(null, { name: 'patch_metadata' }));
}

/** POST a message; opts: {ifVersion, idempotencyKey}. */
export function append(id, msg, opts) {
  const o = opts || {};
  const body = { message: msg };
  if (o.ifVersion !== undefined) body.if_version = o.ifVersion;
  const headers = o.idempotencyKey ? { 'Idempotency-Key': o.idempotencyKey } : {};
  return http.post(`${base()}/contexts/${encodeURIComponent(id)}/messages`, JSON.stringify(body), params(headers, { name: 'append' }));
}

export function tail(id, offset, limit) {
  return http.get(`${base()}/contexts/${encodeURIComponent(id)}/tail?offset=${offset || 0}&limit=${limit || 100}`, params(null, { name: 'tail' }));
}

/** Replay: `fromSeq` as API.md (negative = the newest -fromSeq messages). */
export function replay(id, fromSeq, limit) {
  return http.get(`${base()}/contexts/${encodeURIComponent(id)}/messages?from_seq=${fromSeq}&limit=${limit || 100}`, params(null, { name: 'replay' }));
}

export function window(id, budgetTokens) {
  const q = budgetTokens ? `?budget_tokens=${budgetTokens}` : '';
  return http.get(`${base()}/contexts/${encodeURIComponent(id)}/context${q}`, params(null, { name: 'window' }));
}

export function compact(id, replacement, ifVersion) {
  const body = { replacement };
  if (ifVersion !== undefined) body.if_version = ifVersion;
  return http.post(`${base()}/contexts/${encodeURIComponent(id)}/compact`, JSON.stringify(body), params(null, { name: 'compact' }));
}

/** Polls every node's /health/ready until all answer 200 (or `timeoutSec` pass). */
export function waitReady(timeoutSec) {
  const deadline = Date.now() + (timeoutSec || 60) * 1000;
  for (const node of NODES) {
    const url = `${node.replace(/\/v1$/, '')}/health/ready`;
    for (;;) {
      const r = http.get(url, { tags: { name: 'ready' }, responseCallback: http.expectedStatuses(200, 503) });
      if (r.status === 200) break;
      if (Date.now() > deadline) throw new Error(`${url} not ready: ${r.status} ${r.body}`);
      sleep(0.25);
    }
  }
}

/** A run-unique prefix so that repeated runs against one server do not collide. */
export function runId() {
  return __ENV.RUN_ID || `${Date.now().toString(36)}`;
}

export function json(r) {
  try {
    return r.json();
  } catch (e) {
    return null;
  }
}
