// graphile-worker running the same shape of work as bench/workflow.py's throughput phase:
// CHAINS chains of STEPS no-op jobs, each job queueing the next of its chain, CONCURRENCY
// jobs at once. Prints one JSON line: {"jobs", "seconds", "jobs_per_s"}.
// usage: node run.mjs <postgres url> [chains=64] [steps=10] [concurrency=64]
import { run, makeWorkerUtils, Logger } from "graphile-worker";

// Quiet: its default logger prints a line per job, which would slow it down.
const logger = new Logger(() => () => {});

const [url, chains = "64", steps = "10", concurrency = "64"] = process.argv.slice(2);
const CHAINS = Number(chains), STEPS = Number(steps);
let done = 0, last = 0, finish;
const all = new Promise((r) => (finish = r));

const utils = await makeWorkerUtils({ connectionString: url, logger });
await utils.migrate();
const runner = await run({
  connectionString: url,
  concurrency: Number(concurrency),
  noHandleSignals: true,
  pollInterval: 1000,
  logger,
  taskList: {
    step: async (payload, helpers) => {
      done++;
      if (payload.n + 1 < STEPS) {
        await helpers.addJob("step", { chain: payload.chain, n: payload.n + 1 });
      } else if (++last === CHAINS) {
        finish();
      }
    },
  },
});
const t0 = process.hrtime.bigint();
await Promise.all(
  Array.from({ length: CHAINS }, (_, chain) => utils.addJob("step", { chain, n: 0 })),
);
await all;
const secs = Number(process.hrtime.bigint() - t0) / 1e9;
await runner.stop();
await utils.release();
console.log(JSON.stringify({ jobs: done, seconds: +secs.toFixed(3), jobs_per_s: +(done / secs).toFixed(1) }));
