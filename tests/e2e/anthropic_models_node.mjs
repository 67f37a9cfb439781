// Node's @anthropic-ai/sdk, unchanged but for base URL and key, runs a list of cases through the
// gateway and reports each one's outcome: the per-model matrix of tests/e2e/test_anthropic_node.py,
// in one process. Usage: node anthropic_models_node.mjs BASE_URL KEY cases.json (prints one JSON
// object, {case id: outcome}). A case is {id, model, op, params}: op "create", "stream", "count"
// or "tool_loop" (a streamed request whose tool call is answered, then a second request with the
// assistant turn sent back whole). Cases of one model run in order; models run side by side.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

// the SDK installed project-local by `make clients` (clients/node_modules), resolved from the cwd
const require = createRequire(`${process.cwd()}/package.json`);
const sdk = require("@anthropic-ai/sdk");
const Anthropic = sdk.default ?? sdk.Anthropic ?? sdk;

const [baseURL, apiKey, casesPath] = process.argv.slice(2);
const client = new Anthropic({ baseURL, apiKey, maxRetries: 0 });
const cases = JSON.parse(readFileSync(casesPath, "utf8"));

function summary(message) {
  return {
    ok: true,
    model: message.model,
    stop_reason: message.stop_reason,
    kinds: message.content.map((b) => b.type),
    thinking: message.content.filter((b) => b.type === "thinking").map((b) => ({
      text: b.thinking.length > 0, signed: Boolean(b.signature),
    })),
    text: message.content.filter((b) => b.type === "text").map((b) => b.text).join(""),
    tool_calls: message.content.filter((b) => b.type === "tool_use").map((b) => ({ name: b.name, input: b.input })),
    usage: message.usage,
    request_id: message._request_id ?? null,
  };
}

function failure(err) {
  if (!(err instanceof sdk.APIError)) return { ok: false, status: null, message: String(err?.stack ?? err) };
  return { ok: false, status: err.status, type: err.error?.error?.type ?? null, message: err.error?.error?.message ?? err.message };
}

async function stream(params) {
  let text = "";
  const s = client.messages.stream(params);
  s.on("text", (delta) => { text += delta; });
  const message = await s.finalMessage();
  return { ...summary(message), streamed_text: text };
}

async function run(c) {
  const p = c.params;
  switch (c.op) {
    case "create":
      return summary(await client.messages.create(p));
    case "stream":
      return stream(p);
    case "count":
      return { ok: true, input_tokens: (await client.messages.countTokens(p)).input_tokens };
    case "tool_loop": {
      const s = client.messages.stream(p);
      const first = await s.finalMessage();
      const calls = first.content.filter((b) => b.type === "tool_use");
      if (!calls.length) return { ok: false, status: null, message: "no tool call", first: summary(first) };
      const messages = [
        ...p.messages,
        { role: "assistant", content: first.content },  // its thinking block first, as it came
        { role: "user", content: calls.map((b) => ({ type: "tool_result", tool_use_id: b.id, content: "18C and sunny" })) },
      ];
      const second = await client.messages.create({ ...p, messages });
      return { ...summary(second), first: summary(first) };
    }
    default:
      throw new Error(`unknown op ${c.op}`);
  }
}

const byModel = new Map();
for (const c of cases) byModel.set(c.model, [...(byModel.get(c.model) ?? []), c]);
const out = {};
await Promise.all([...byModel.values()].map(async (list) => {
  for (const c of list) {
    try {
      out[c.id] = await run(c);
    } catch (err) {
      out[c.id] = failure(err);
    }
  }
}));
process.stdout.write(JSON.stringify(out));
