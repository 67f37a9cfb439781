// One request (or several at once) with a Node SDK and its default retry settings; prints
// {"ok", "seconds", "error"} as one JSON line. Run with NODE_PATH=clients/node_modules.
//   node fault_client.cjs '{"sdk":"anthropic"|"openai","base":URL,"key":K,"stream":bool,"concurrent":N,"model":M}'
const spec = JSON.parse(process.argv[2]);

// The SDKs' backoff jitter comes from Math.random: the same seed for the direct run and the run
// through the gateway, so the two differ by what the gateway does, not by the dice. (mulberry32)
let seed = spec.seed >>> 0;
Math.random = () => {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};

async function one(client) {
  const messages = [{ role: "user", content: "hello from node" }];
  if (spec.sdk === "anthropic") {
    if (spec.stream) {
      const stream = client.messages.stream({ model: spec.model, max_tokens: 64, messages });
      const message = await stream.finalMessage();
      if (!message.content.length) throw new Error("empty message");
      return;
    }
    const message = await client.messages.create({ model: spec.model, max_tokens: 64, messages });
    if (!message.content.length) throw new Error("empty message");
    return;
  }
  if (spec.stream) {
    const stream = await client.chat.completions.create({ model: spec.model, max_tokens: 64, messages, stream: true });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
    if (!text) throw new Error("empty completion");
    return;
  }
  const completion = await client.chat.completions.create({ model: spec.model, max_tokens: 64, messages });
  if (!completion.choices[0].message.content) throw new Error("empty completion");
}

async function main() {
  let client;
  if (spec.sdk === "anthropic") {
    const Anthropic = require("@anthropic-ai/sdk").default;
    client = new Anthropic({ baseURL: spec.base, apiKey: spec.key });
  } else {
    const OpenAI = require("openai").default;
    client = new OpenAI({ baseURL: spec.base + "/v1", apiKey: spec.key });
  }
  const t0 = performance.now();
  const results = await Promise.allSettled(Array.from({ length: spec.concurrent || 1 }, () => one(client)));
  const seconds = (performance.now() - t0) / 1000;
  const failed = results.find((r) => r.status === "rejected");
  const error = failed ? `${failed.reason?.constructor?.name}${failed.reason?.status ? " " + failed.reason.status : ""}` : null;
  process.stdout.write(JSON.stringify({ ok: !failed, seconds, error }) + "\n");
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({ ok: false, seconds: null, error: String(err) }) + "\n");
});
