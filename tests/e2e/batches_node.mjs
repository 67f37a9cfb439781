// Node's @anthropic-ai/sdk, unchanged but for base URL and key, drives a Message Batch through the
// gateway: an invalid batch refused, a batch created, polled until ended, results streamed, deleted.
// Usage: node batches_node.mjs BASE_URL KEY requests.json bad.json  (prints one JSON object)
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

// the SDK installed project-local by `make clients` (clients/node_modules), resolved from the cwd
const require = createRequire(`${process.cwd()}/package.json`);
const sdk = require("@anthropic-ai/sdk");
const Anthropic = sdk.default ?? sdk.Anthropic ?? sdk;

const [baseURL, apiKey, requestsPath, badPath] = process.argv.slice(2);
const client = new Anthropic({ baseURL, apiKey, maxRetries: 0 });
const out = {};
try {
  await client.messages.batches.create({ requests: JSON.parse(readFileSync(badPath, "utf8")) });
  out.refused = null;
} catch (err) {
  out.refused = { status: err.status, message: err.error?.error?.message ?? String(err) };
}
let batch = await client.messages.batches.create({ requests: JSON.parse(readFileSync(requestsPath, "utf8")) });
const deadline = Date.now() + 60_000;
while (batch.processing_status !== "ended" && Date.now() < deadline) {
  await new Promise((r) => setTimeout(r, 100));
  batch = await client.messages.batches.retrieve(batch.id);
}
out.batch = batch;
out.results = [];
for await (const line of await client.messages.batches.results(batch.id)) {
  out.results.push(line);
}
out.deleted = await client.messages.batches.delete(batch.id);
process.stdout.write(JSON.stringify(out));
