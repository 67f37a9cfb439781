// Node's openai SDK, unchanged but for base URL and key, runs a list of Chat Completions and
// Responses cases through the gateway and reports each one's outcome: the per-model matrix of
// tests/e2e/test_openai_node.py, in one process. Usage: node openai_models_node.mjs BASE_URL KEY
// cases.json (prints one JSON object, {case id: outcome}). A case is {id, model, op, params}: op
// "chat", "chat_stream", "chat_loop" (a tool call answered, the assistant message sent back as it
// came, reasoning included), "chat_stream_loop" (the same, streamed), "responses", "responses_stream" or "responses_loop" (the output items,
// reasoning with its encrypted content, sent back with the function_call_output). Cases of one model
// run in order; models run side by side.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

// the SDK installed project-local by `make clients` (clients/node_modules), resolved from the cwd
const require = createRequire(`${process.cwd()}/package.json`);
const sdk = require("openai");
const OpenAI = sdk.default ?? sdk.OpenAI ?? sdk;

const [baseURL, apiKey, casesPath] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${baseURL}/v1`, apiKey, maxRetries: 0 });
const cases = JSON.parse(readFileSync(casesPath, "utf8"));
const HEADERS = ["ethereal-dropped-params", "ethereal-thinking", "ethereal-prefill", "x-request-id"];

function headers(response) {
  const out = {};
  for (const h of HEADERS) {
    const v = response.headers.get(h);
    if (v !== null) out[h] = v;
  }
  return out;
}

function chat(completion, response) {
  const choice = completion.choices[0];
  return {
    ok: true, model: completion.model, headers: response ? headers(response) : {},
    finish_reason: choice.finish_reason, content: choice.message.content ?? "",
    tool_calls: (choice.message.tool_calls ?? []).map((c) => ({ id: c.id, name: c.function.name, arguments: c.function.arguments })),
    reasoning: Boolean(choice.message.reasoning_content), signed: Boolean(choice.message.reasoning_signature),
    message: choice.message, usage: completion.usage,
  };
}

function responses(resp, response) {
  return {
    ok: true, model: resp.model, headers: response ? headers(response) : {}, status: resp.status,
    // output_text is the SDK's convenience on a created response, not on a streamed event's: from the items
    types: resp.output.map((item) => item.type),
    output_text: resp.output.filter((item) => item.type === "message")
      .flatMap((item) => item.content).filter((part) => part.type === "output_text").map((part) => part.text).join(""),
    sdk_output_text: resp.output_text ?? null,
    calls: resp.output.filter((item) => item.type === "function_call").map((item) => ({ call_id: item.call_id, name: item.name, arguments: item.arguments })),
    encrypted: resp.output.filter((item) => item.type === "reasoning").every((item) => Boolean(item.encrypted_content)),
    summarized: resp.output.filter((item) => item.type === "reasoning")
      .every((item) => (item.summary ?? []).some((part) => part.text.length > 0)),
    output: resp.output, usage: resp.usage,
  };
}

function failure(err) {
  if (!(err instanceof sdk.APIError)) return { ok: false, status: null, message: String(err?.stack ?? err) };
  return { ok: false, status: err.status, param: err.param ?? null, code: err.code ?? null, type: err.type ?? null, message: err.message };
}

async function chatStream(p) {
  const { data: stream, response } = await client.chat.completions
    .create({ ...p, stream: true, stream_options: { include_usage: true } }).withResponse();
  let content = "", reasoning = "", signature = null, finish = null, usage = null;
  const calls = [];
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    const choice = chunk.choices[0];
    if (!choice) continue;
    const delta = choice.delta ?? {};
    content += delta.content ?? "";
    reasoning += delta.reasoning_content ?? "";
    if (delta.reasoning_signature) signature = delta.reasoning_signature;
    for (const t of delta.tool_calls ?? []) {
      calls[t.index] ??= { id: "", type: "function", function: { name: "", arguments: "" } };
      if (t.id) calls[t.index].id = t.id;
      if (t.function?.name) calls[t.index].function.name += t.function.name;
      if (t.function?.arguments) calls[t.index].function.arguments += t.function.arguments;
    }
    if (choice.finish_reason) finish = choice.finish_reason;
  }
  return { ok: true, headers: headers(response), content, reasoning: reasoning.length > 0, reasoning_text: reasoning,
    signature, signed: Boolean(signature), finish_reason: finish, usage, tool_calls: calls.length, calls };
}

async function run(c) {
  const p = c.params;
  switch (c.op) {
    case "chat": {
      const { data, response } = await client.chat.completions.create(p).withResponse();
      return chat(data, response);
    }
    case "chat_stream":
      return chatStream(p);
    case "chat_stream_loop": {
      // a streamed tool call, the assistant message put together from its deltas as a client does
      // (reasoning_content, the reasoning_signature of the finish chunk, tool_calls by index), answered
      const first = await chatStream(p);
      if (!first.calls.length) return { ok: false, status: null, message: "no tool call", first };
      const message = { role: "assistant", content: first.content || null, tool_calls: first.calls,
        reasoning_content: first.reasoning_text, reasoning_signature: first.signature };
      const messages = [...p.messages, message,
        ...first.calls.map((t) => ({ role: "tool", tool_call_id: t.id, content: "18C, sunny" }))];
      return { ...(await chatStream({ ...p, messages })), first };
    }
    case "chat_loop": {
      const first = await client.chat.completions.create(p);
      const message = first.choices[0].message;
      if (!message.tool_calls?.length) return { ok: false, status: null, message: "no tool call", first: chat(first) };
      const messages = [...p.messages, message,  // reasoning_content + reasoning_signature go back as they came
        ...message.tool_calls.map((t) => ({ role: "tool", tool_call_id: t.id, content: "18C, sunny" }))];
      const { data, response } = await client.chat.completions.create({ ...p, messages }).withResponse();
      return { ...chat(data, response), first: chat(first) };
    }
    case "responses": {
      const { data, response } = await client.responses.create(p).withResponse();
      return responses(data, response);
    }
    case "responses_stream": {
      const { data: stream, response } = await client.responses.create({ ...p, stream: true }).withResponse();
      const kinds = new Set();
      let text = "", final = null;
      for await (const event of stream) {
        kinds.add(event.type);
        if (event.type === "response.output_text.delta") text += event.delta;
        if (event.type === "response.completed" || event.type === "response.incomplete") final = event.response;
      }
      if (!final) return { ok: false, status: null, message: `no response.completed: ${[...kinds]}` };
      return { ...responses(final, response), streamed_text: text, events: [...kinds] };
    }
    case "responses_loop": {
      const first = await client.responses.create(p);
      const calls = first.output.filter((item) => item.type === "function_call");
      if (!calls.length) return { ok: false, status: null, message: "no tool call", first: responses(first) };
      const input = [...(typeof p.input === "string" ? [{ role: "user", content: p.input }] : p.input), ...first.output,
        ...calls.map((call) => ({ type: "function_call_output", call_id: call.call_id, output: "18C" }))];
      const { data, response } = await client.responses.create({ ...p, input }).withResponse();
      return { ...responses(data, response), first: responses(first) };
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
