// A k6 load-and-correctness mix for a running Weir, shaped for `weir demo`'s routes:
//
//   weir demo &                        # proxy on 127.0.0.1:8080
//   k6 run benches/e2e/k6/ingress.js   # 10 VUs for 10 s, plus one scale-from-zero request
//
// Environment: BASE_URL (default http://127.0.0.1:8080), VUS (10), DURATION (10s),
// COLD_TIMEOUT (60s, how long the scale-from-zero request may be held).
//
// What it sends, by weight:
//   60%  Host hello.default.example.com            90/10 split hello-00001 / hello-00002
//   10%  Host current-hello.default.example.com    tag host -> always hello-00001
//   10%  Host candidate-hello.default.example.com  tag host -> always hello-00002
//    5%  Host hello..., Knative-Serving-Tag: candidate -> hello-00002 (demo has tag_header_routing)
//   10%  Host api.example.com, /v2/users            path rule -> hello-00002 with x-api-version 2
//    3%  Host api.example.com, /                    catch-all path -> hello-00001
//    2%  Host nope.example.com                      unknown host -> 404 (expected, not a failure)
// and, once, Host sleepy.default.example.com: a revision scaled to zero, which the demo starts
// when a request is held for it (2 s cold start); the check is that it answers 200.

import http from 'k6/http';
import { check, sleep } from 'k6';
import { Rate, Trend } from 'k6/metrics';

const BASE = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/$/, '');
const VUS = Number(__ENV.VUS || 10);
const DURATION = __ENV.DURATION || '10s';
const COLD_TIMEOUT = __ENV.COLD_TIMEOUT || '60s';

const candidateShare = new Rate('split_candidate_share'); // share of hello-00002 on the default host
const coldStart = new Trend('cold_start_duration', true);

export const options = {
  scenarios: {
    routing: {
      executor: 'constant-vus',
      vus: VUS,
      duration: DURATION,
      exec: 'routing',
    },
    scale_from_zero: {
      executor: 'per-vu-iterations',
      vus: 1,
      iterations: 1,
      maxDuration: '90s',
      exec: 'scaleFromZero',
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
    'checks{scenario:scale_from_zero}': ['rate==1'],
    'http_req_duration{scenario:routing}': ['p(95)<250'],
    split_candidate_share: ['rate>0.05', 'rate<0.15'],
    cold_start_duration: ['max<30000'],
  },
};

function rev(res) {
  return res.headers['X-Revision'] || res.headers['x-revision'] || '';
}

const ROUTES = [
  {
    weight: 60, name: 'hello', host: 'hello.default.example.com', path: '/',
    checks: {
      'hello: 200': (r) => r.status === 200,
      'hello: a revision of the split': (r) => rev(r) === 'hello-00001' || rev(r) === 'hello-00002',
    },
    after: (r) => { if (r.status === 200) candidateShare.add(rev(r) === 'hello-00002'); },
  },
  {
    weight: 10, name: 'tag-current', host: 'current-hello.default.example.com', path: '/',
    checks: {
      'tag current: 200': (r) => r.status === 200,
      'tag current: hello-00001': (r) => rev(r) === 'hello-00001',
    },
  },
  {
    weight: 10, name: 'tag-candidate', host: 'candidate-hello.default.example.com', path: '/',
    checks: {
      'tag candidate: 200': (r) => r.status === 200,
      'tag candidate: hello-00002': (r) => rev(r) === 'hello-00002',
    },
  },
  {
    weight: 5, name: 'tag-header', host: 'hello.default.example.com', path: '/',
    headers: { 'Knative-Serving-Tag': 'candidate' },
    checks: {
      'tag header: 200': (r) => r.status === 200,
      'tag header: hello-00002': (r) => rev(r) === 'hello-00002',
    },
  },
  {
    weight: 10, name: 'path-v2', host: 'api.example.com', path: '/v2/users',
    checks: {
      'path /v2: 200': (r) => r.status === 200,
      'path /v2: hello-00002': (r) => rev(r) === 'hello-00002',
      'path /v2: x-api-version 2 appended': (r) => String(r.body).includes('x-api-version 2'),
    },
  },
  {
    weight: 3, name: 'path-root', host: 'api.example.com', path: '/',
    checks: {
      'path /: 200': (r) => r.status === 200,
      'path /: hello-00001': (r) => rev(r) === 'hello-00001',
    },
  },
  {
    weight: 2, name: 'unknown-host', host: 'nope.example.com', path: '/', expect: 404,
    checks: { 'unknown host: 404': (r) => r.status === 404 },
  },
];
const TOTAL = ROUTES.reduce((s, r) => s + r.weight, 0);

function pick() {
  let x = Math.random() * TOTAL;
  for (const r of ROUTES) {
    x -= r.weight;
    if (x < 0) return r;
  }
  return ROUTES[0];
}

export function routing() {
  const route = pick();
  const params = {
    headers: Object.assign({ Host: route.host }, route.headers || {}),
    tags: { route: route.name },
  };
  if (route.expect) params.responseCallback = http.expectedStatuses(route.expect);
  const res = http.get(`${BASE}${route.path}`, params);
  check(res, route.checks, { route: route.name });
  if (route.after) route.after(res);
}

export function scaleFromZero() {
  // The first request is held until the revision has an endpoint, then answered. A proxy that
  // gives up (503/504 at its hold timeout) is asked again until the deadline.
  const started = Date.now();
  const deadline = started + 60000;
  let res;
  do {
    res = http.get(`${BASE}/`, {
      headers: { Host: 'sleepy.default.example.com' },
      timeout: COLD_TIMEOUT,
      tags: { route: 'scale-from-zero' },
      responseCallback: http.expectedStatuses(200, 503, 504),
    });
    if (res.status === 200) break;
    sleep(0.5);
  } while (Date.now() < deadline);
  coldStart.add(Date.now() - started);
  check(res, {
    'scale from zero: eventually 200': (r) => r.status === 200,
    'scale from zero: sleepy-00001 answered': (r) => rev(r) === 'sleepy-00001',
  });
}
