// Idle connections: VUS WebSockets opened at once (one per VU, k6's model), held HOLD seconds, closed.
// The k6 side of bench/run_bench.py's open-rate and memory-per-connection figures.
// k6 run --no-usage-report -e URL=ws://127.0.0.1:PORT/ws -e VUS=10000 -e HOLD=15 -e SUMMARY=out.json connect.js
import { WebSocket } from 'k6/experimental/websockets';

const VUS = parseInt(__ENV.VUS || '10000');
const HOLD = parseFloat(__ENV.HOLD || '15');

export const options = {
  scenarios: { idle: { executor: 'per-vu-iterations', vus: VUS, iterations: 1, maxDuration: `${HOLD + 120}s` } },
};

export default function () {
  const ws = new WebSocket(__ENV.URL, null, { headers: { Authorization: `Bearer ${__ENV.TOKEN || 'bench'}` } });
  ws.onopen = () => { setTimeout(() => ws.close(), HOLD * 1000); };
  ws.onerror = () => {};
}

export function handleSummary(data) {
  return { [__ENV.SUMMARY || 'k6-connect-summary.json']: JSON.stringify(data) };
}
