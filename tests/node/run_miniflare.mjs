// Run cloud_workers/cloudflare/worker.js under Miniflare for the tests.
//
// Configuration comes as JSON in the MINIFLARE_CONFIG environment variable
// (not argv, so secrets stay out of `ps`); tests/support/servers.py builds it
// from wrangler.toml:
//   {port, workerDir, main, compatibilityDate, emailDir, bindings: {NAME: "value"},
//    queue: {name, producerBinding, maxBatchSize, maxBatchTimeout, maxRetries, deadLetterQueue},
//    email: [{name, allowed_destination_addresses?}], r2Buckets: ["CERTIFICATES"]}
//
// Two workers run in one instance:
//   - "offload": the worker under test, with its queue consumer, producer,
//     send_email binding (sent mail is logged and written under emailDir),
//     R2 bucket and vars/secrets;
//   - "harness" (receives HTTP): POST /__test/enqueue puts the JSON body on the
//     queue like the REST API does (content type json); GET /__test/dead-letters
//     lists what reached the dead-letter queue; any other request goes to the
//     worker under test's fetch handler.
// Prints "READY <url>" once serving; disposes Miniflare on SIGTERM/SIGINT.
import { Miniflare } from "miniflare";

const config = JSON.parse(process.env.MINIFLARE_CONFIG);
const queue = config.queue;

const HARNESS = `
const deadLetters = [];
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/__test/enqueue" && request.method === "POST") {
      await env.QUEUE.send(await request.json(), { contentType: "json" });
      return new Response("queued", { status: 202 });
    }
    if (url.pathname === "/__test/dead-letters") {
      return Response.json(deadLetters);
    }
    return env.OFFLOAD.fetch(request);
  },
  async queue(batch) {
    for (const message of batch.messages) {
      deadLetters.push({ id: message.id, attempts: message.attempts, body: message.body });
      message.ack();
    }
  },
};
`;

const consumers = {
  [queue.name]: {
    maxBatchSize: queue.maxBatchSize,
    maxBatchTimeout: queue.maxBatchTimeout,
    maxRetries: queue.maxRetries,
    deadLetterQueue: queue.deadLetterQueue,
  },
};

const mf = new Miniflare({
  host: "127.0.0.1",
  port: config.port,
  defaultProjectTmpPath: config.emailDir,
  // POST /cdn-cgi/handler/email?from=&to= (with MF-Route-Override: offload) runs the worker's email()
  unsafeTriggerHandlers: true,
  workers: [
    {
      name: "harness",
      modules: true,
      script: HARNESS,
      compatibilityDate: config.compatibilityDate,
      queueProducers: { QUEUE: { queueName: queue.name } },
      queueConsumers: { [queue.deadLetterQueue]: { maxBatchSize: 10, maxBatchTimeout: queue.maxBatchTimeout } },
      serviceBindings: { OFFLOAD: "offload" },
    },
    {
      name: "offload",
      modules: true,
      modulesRoot: config.workerDir,
      scriptPath: `${config.workerDir}/${config.main}`,
      // As wrangler does for an ES module worker: imported .js files are ES modules too.
      modulesRules: [{ type: "ESModule", include: ["**/*.js"] }],
      compatibilityDate: config.compatibilityDate,
      bindings: config.bindings,
      queueProducers: { [queue.producerBinding]: { queueName: queue.name } },
      queueConsumers: consumers,
      email: { send_email: config.email },
      r2Buckets: config.r2Buckets,
    },
  ],
});

const url = await mf.ready;
console.log(`READY ${url}`);

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  await mf.dispose();
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
