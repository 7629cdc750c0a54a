// Echo throughput, closed loop (one message in flight per connection): the k6 side of bench/run_bench.py.
// k6 run --no-usage-report -e URL=ws://127.0.0.1:PORT/ws -e VUS=100 -e SECONDS=15 -e SIZE=1024 -e SUMMARY=out.json echo.js
import { WebSocket } from 'k6/experimental/websockets';
import { Trend } from 'k6/metrics';

const VUS = parseInt(__ENV.VUS || '100');
const SECONDS = parseFloat(__ENV.SECONDS || '15');
const SIZE = parseInt(__ENV.SIZE || '1024');
const rtt = new Trend('echo_rtt', true);  // every round trip, as the agent records every one

export const options = {
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
  scenarios: { echo: { executor: 'per-vu-iterations', vus: VUS, iterations: 1, maxDuration: `${SECONDS + 60}s` } },
};

// the same JSON shape and size as the agent's echo frames
const msg = '{"type":"echo","id":1,"ts":1000000000000000000,"body":"' + 'x'.repeat(SIZE) + '"}';

export default function () {
  const ws = new WebSocket(__ENV.URL, null, { headers: { Authorization: `Bearer ${__ENV.TOKEN || 'bench'}` } });
  let sent = 0;
  let stop = false;
  ws.onopen = () => {
    sent = Date.now();
    ws.send(msg);
    setTimeout(() => { stop = true; ws.close(); }, SECONDS * 1000);
  };
  ws.onmessage = () => {
    const now = Date.now();
    rtt.add(now - sent);
    if (!stop) {
      sent = now;
      ws.send(msg);
    }
  };
  ws.onerror = () => {};
}

export function handleSummary(data) {
  return { [__ENV.SUMMARY || 'k6-echo-summary.json']: JSON.stringify(data) };
}
