// Serve cloud_workers/cloudflare/certificates.js alone under Miniflare (workerd),
// with an in-memory R2 bucket bound as CERTIFICATES, for the Python tests.
//
//   node run_cert_gateway.mjs <port>     (CERTIFICATE_SIGNING_SECRET from the environment)
//
// Prints "ready <url>" once it answers, and disposes of workerd on SIGTERM/SIGINT.
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Miniflare } from "miniflare";

const here = dirname(fileURLToPath(import.meta.url));
const moduleDir = resolve(here, "../../cloud_workers/cloudflare");
const port = Number(process.argv[2] || process.env.PORT || 0);
const secret = process.env.CERTIFICATE_SIGNING_SECRET;
if (!secret) {
  console.error("CERTIFICATE_SIGNING_SECRET is required");
  process.exit(2);
}

const entry = `import { handleCertificates } from "./certificates.js";
export default { fetch: (request, env) => handleCertificates(request, env) };`;

const mf = new Miniflare({
  host: "127.0.0.1",
  port,
  compatibilityDate: "2026-07-01", // as cloud_workers/cloudflare/wrangler.toml
  modulesRoot: moduleDir,
  modules: [
    { type: "ESModule", path: resolve(moduleDir, "cert_gateway_entry.mjs"), contents: entry },
    { type: "ESModule", path: resolve(moduleDir, "certificates.js"),
      contents: readFileSync(resolve(moduleDir, "certificates.js"), "utf8") },
  ],
  r2Buckets: ["CERTIFICATES"],
  bindings: { CERTIFICATE_SIGNING_SECRET: secret },
});

const url = await mf.ready;
console.log(`ready ${url}`);

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  await mf.dispose();
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
