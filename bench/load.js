// k6 load test through the Envoy gateway (gRPC, protos by server reflection).
//
// A fixed arrival rate of mixed ContextCache calls; prints p50/p95/p99 latency and the
// error rate (RESOURCE_EXHAUSTED is counted apart, as deliberate rate limiting).
// Started by bench/gateway_load.py, which brings up the services, the ratelimit service
// (limits raised) and Envoy. Environment:
//   GATEWAY   host:port of Envoy                       (default 127.0.0.1:8080)
//   RATE      calls per second                         (default 50)
//   DURATION  test length                              (default 60s)
//   WORKLOAD  weighted RPCs, "Name=weight,..."         (default GetStatus=2,GetProject=1,ListProjects=1)
//             known: GetStatus, GetProject, ListProjects, ListDocuments, Query
//   PROJECT_ID, UNLOCK_TOKEN  for the project-scoped calls (setup() creates a project when
//             PROJECT_ID is unset and CreateProject works)
import grpc from 'k6/net/grpc';
import { Counter, Rate, Trend } from 'k6/metrics';

const GATEWAY = __ENV.GATEWAY || '127.0.0.1:8080';
const RATE = Number(__ENV.RATE || 50);
const DURATION = __ENV.DURATION || '60s';
const WORKLOAD = (__ENV.WORKLOAD || 'GetStatus=2,GetProject=1,ListProjects=1')
  .split(',')
  .map((part) => part.trim().split('='))
  .map(([name, weight]) => ({ name, weight: Number(weight || 1) }));

export const options = {
  scenarios: {
    mixed: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: 20,
      maxVUs: 200,
    },
  },
  summaryTrendStats: ['min', 'med', 'p(50)', 'p(95)', 'p(99)', 'max'],
};

const latency = new Trend('rpc_latency', true);
const errors = new Rate('rpc_errors');
const rateLimited = new Counter('rpc_rate_limited');
const rpcErrors = {};

const RPCS = {
  GetStatus: () => ['contextcache.v1.ProjectService/GetStatus', {}],
  GetProject: (d) => ['contextcache.v1.ProjectService/GetProject', { project_id: d.projectId }],
  ListProjects: () => ['contextcache.v1.ProjectService/ListProjects', { page_size: 20 }],
  ListDocuments: (d) => ['contextcache.v1.IngestService/ListDocuments', { project_id: d.projectId, page_size: 20 }],
  Query: (d) => ['contextcache.v1.QueryService/Query', { project_id: d.projectId, query: 'what is contextcache', top_k: 5 }],
};
for (const { name } of WORKLOAD) {
  if (!RPCS[name]) throw new Error(`unknown RPC in WORKLOAD: ${name}`);
  rpcErrors[name] = new Rate(`rpc_errors_${name}`);
}
const totalWeight = WORKLOAD.reduce((sum, w) => sum + w.weight, 0);

const client = new grpc.Client();
let connected = false;

function connect() {
  if (!connected) {
    client.connect(GATEWAY, { plaintext: true, reflect: true, timeout: '5s' });
    connected = true;
  }
}

export function setup() {
  let projectId = __ENV.PROJECT_ID || '';
  if (!projectId) {
    connect();
    const response = client.invoke('contextcache.v1.ProjectService/CreateProject', {
      name: `k6 ${Date.now()}`,
      passphrase: 'correct horse battery staple, k6 edition',
    });
    let missing = false;
    if (response.status === grpc.StatusOK) projectId = response.message.project.id;
    else {
      // No project can be made yet: project-scoped calls target a missing one, and their
      // expected answer is NOT_FOUND (still a full trip through Envoy to the service).
      console.warn(`CreateProject failed (status ${response.status}): expecting NOT_FOUND`);
      projectId = '00000000-0000-4000-8000-000000000000';
      missing = true;
    }
    client.close();
    connected = false;
    return { projectId, missing, unlockToken: __ENV.UNLOCK_TOKEN || '' };
  }
  return { projectId, missing: false, unlockToken: __ENV.UNLOCK_TOKEN || '' };
}

function pick() {
  let roll = Math.random() * totalWeight;
  for (const w of WORKLOAD) {
    roll -= w.weight;
    if (roll < 0) return w.name;
  }
  return WORKLOAD[WORKLOAD.length - 1].name;
}

export default function (data) {
  connect();
  const name = pick();
  const [method, request] = RPCS[name](data);
  const metadata = data.unlockToken ? { 'x-unlock-token': data.unlockToken } : {};
  const started = Date.now();
  const response = client.invoke(method, request, { metadata, timeout: '10s' });
  latency.add(Date.now() - started, { rpc: name });
  const scoped = name !== 'GetStatus' && name !== 'ListProjects';
  const expected = data.missing && scoped ? grpc.StatusNotFound : grpc.StatusOK;
  const limited = response.status === grpc.StatusResourceExhausted;
  if (limited) rateLimited.add(1);
  const failed = !limited && response.status !== expected;
  rpcErrors[name].add(failed);
  errors.add(failed);
}

export function handleSummary(data) {
  const t = data.metrics.rpc_latency.values;
  const calls = data.metrics.iterations ? data.metrics.iterations.values.count : 0;
  const lines = [
    `gateway load: ${calls} calls at ${RATE}/s for ${DURATION}, workload ${WORKLOAD.map((w) => `${w.name}=${w.weight}`).join(',')}`,
    `latency ms: p50 ${t['p(50)'].toFixed(2)}  p95 ${t['p(95)'].toFixed(2)}  p99 ${t['p(99)'].toFixed(2)}  max ${t.max.toFixed(2)}`,
    `error rate: ${(100 * data.metrics.rpc_errors.values.rate).toFixed(2)}%  rate limited: ${data.metrics.rpc_rate_limited ? data.metrics.rpc_rate_limited.values.count : 0}`,
    ...WORKLOAD.map(({ name }) => `  ${name}: error rate ${(100 * data.metrics[`rpc_errors_${name}`].values.rate).toFixed(2)}%`),
    `dropped iterations: ${data.metrics.dropped_iterations ? data.metrics.dropped_iterations.values.count : 0}`,
  ];
  return { stdout: lines.join('\n') + '\n', [__ENV.SUMMARY_JSON || '/dev/null']: JSON.stringify(data) };
}
