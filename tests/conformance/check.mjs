#!/usr/bin/env node
// The project's own conformance check for the request bodies the worker sends:
// POST /conversations (the default), or with `--kind feedback` POST /feedback,
// or with `--kind events` POST /events.
//
// The analytics API validates bodies with the schemas that ship in the official
// Inkeep Analytics TypeScript SDK, so this check asks the SDK rather than a copy
// of its rules. A body passes when:
//   - it is at most 2,000,000 bytes of JSON with "type": "openai";
//   - the SDK's CreateConversation wire schema accepts it;
//   - serializing the parsed value back with the SDK gives the same body: a key
//     the SDK drops is one the API does not know, a changed value is one the
//     API would store differently (timestamps compare by instant);
//   - it holds at least one message, and no two messages share an `id`.
// Feedback and event bodies pass when they are at most 2,000,000 bytes, their
// SDK schema (LogFeedbackRequestBody, InsertEvent) accepts them, and they
// survive the same round trip.
//
// Usage: node check.mjs [--kind conversations|feedback|events] [FILE...]
//        (NDJSON, one body per line; stdin without FILE)
// Prints one line per failing body, then "N passed, N failed".
// Exits 0 when every body passed (and there was at least one), 1 otherwise,
// 2 when the input cannot be read. Install once with `npm ci` in this folder.
import { readFileSync } from "node:fs";
import {
  CreateConversation$inboundSchema,
  CreateConversation$outboundSchema,
  CreateOpenAIConversation$inboundSchema,
  InsertEvent$inboundSchema,
  InsertEvent$outboundSchema,
} from "@inkeep/inkeep-analytics/models/components";
import {
  LogFeedbackRequestBody$inboundSchema,
  LogFeedbackRequestBody$outboundSchema,
} from "@inkeep/inkeep-analytics/models/operations";

const OTHER_KINDS = {
  feedback: [LogFeedbackRequestBody$inboundSchema, LogFeedbackRequestBody$outboundSchema],
  events: [InsertEvent$inboundSchema, InsertEvent$outboundSchema],
};
let kind = "conversations";

const BODY_LIMIT = 2_000_000;
const TIMESTAMP_KEYS = new Set(["createdAt", "updatedAt"]);

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v) && !(v instanceof Date);

// The SDK parks unknown user properties under `additionalProperties` only when
// there are some, but its serializer always expects that key.
function readyToSerialize(value) {
  if (Array.isArray(value)) return value.map(readyToSerialize);
  if (!isObject(value)) return value;
  const out = {};
  for (const [key, v] of Object.entries(value)) {
    out[key] = readyToSerialize(v);
    if (key === "userProperties" && isObject(v) && !("additionalProperties" in v)) {
      out[key].additionalProperties = {};
    }
  }
  return out;
}

// JSON as it would go on the wire: dates as ISO strings, undefined keys gone.
function asWire(value) {
  return JSON.parse(JSON.stringify(value));
}

function sameInstant(a, b) {
  return typeof a === "string" && typeof b === "string" && Date.parse(a) === Date.parse(b);
}

// Every place where what came back from the SDK differs from what was sent.
function drift(sent, back, path, found) {
  if (Array.isArray(sent)) {
    if (!Array.isArray(back) || back.length !== sent.length) {
      found.push(`${path}: array not kept as sent`);
      return found;
    }
    sent.forEach((item, i) => drift(item, back[i], `${path}[${i}]`, found));
    return found;
  }
  if (isObject(sent)) {
    if (!isObject(back)) {
      found.push(`${path}: object not kept`);
      return found;
    }
    for (const [key, v] of Object.entries(sent)) {
      const at = `${path}.${key}`;
      if (!(key in back)) found.push(`${at}: not part of the API's schema (the SDK drops it)`);
      else if (TIMESTAMP_KEYS.has(key) && typeof v === "string") {
        if (!sameInstant(v, back[key])) found.push(`${at}: timestamp ${JSON.stringify(v)} became ${JSON.stringify(back[key])}`);
      } else drift(v, back[key], at, found);
    }
    for (const key of Object.keys(back)) {
      if (!(key in sent)) found.push(`${path}.${key}: added by the SDK on the way back`);
    }
    return found;
  }
  if (sent !== back) found.push(`${path}: ${JSON.stringify(sent)} became ${JSON.stringify(back)}`);
  return found;
}

function duplicateMessageIds(messages) {
  const seen = new Set();
  const repeated = new Set();
  for (const m of messages) {
    if (isObject(m) && typeof m.id === "string") (seen.has(m.id) ? repeated : seen).add(m.id);
  }
  return [...repeated];
}

// The reasons a feedback or event body fails; empty when it passes.
function otherProblemsOf(body) {
  const [inbound, outbound] = OTHER_KINDS[kind];
  const parsed = inbound.safeParse(body);
  if (!parsed.success) return parsed.error.issues.map((issue) => `$.${issue.path.join(".")}: ${issue.message}`);
  let back;
  try {
    back = asWire(outbound.parse(readyToSerialize(parsed.data)));
  } catch (e) {
    return [`the SDK cannot serialize it back: ${String(e.message).slice(0, 300)}`];
  }
  return drift(body, back, "$", []);
}

// The reasons `line` fails; empty when it passes.
function problemsOf(line) {
  const size = Buffer.byteLength(line, "utf8");
  if (size > BODY_LIMIT) return [`${size} bytes, over the API's ${BODY_LIMIT}-byte limit`];
  let body;
  try {
    body = JSON.parse(line);
  } catch (e) {
    return [`not JSON (${e.message})`];
  }
  if (!isObject(body)) return ["not a JSON object"];
  if (kind !== "conversations") return otherProblemsOf(body);
  if (body.type !== "openai") return [`$.type: expected "openai", got ${JSON.stringify(body.type)}`];

  const parsed = CreateConversation$inboundSchema.safeParse(body);
  if (!parsed.success) {
    // A failed union only says no member matched; the openai member says why.
    const own = CreateOpenAIConversation$inboundSchema.safeParse(body);
    const issues = own.success ? parsed.error.issues : own.error.issues;
    return issues.map((issue) => `$.${issue.path.join(".")}: ${issue.message}`);
  }

  const found = [];
  if (body.messages.length === 0) found.push("$.messages: needs at least one message");
  for (const id of duplicateMessageIds(body.messages)) found.push(`$.messages: id ${JSON.stringify(id)} appears more than once`);

  let back;
  try {
    back = asWire(CreateConversation$outboundSchema.parse(readyToSerialize(parsed.data)));
  } catch (e) {
    found.push(`the SDK cannot serialize it back: ${String(e.message).slice(0, 300)}`);
    return found;
  }
  return drift(body, back, "$", found);
}

function readInput(files) {
  if (files.length === 0) return readFileSync(0, "utf8");
  return files.map((file) => readFileSync(file, "utf8")).join("\n");
}

function main() {
  let files = process.argv.slice(2);
  const at = files.indexOf("--kind");
  if (at >= 0) {
    kind = files[at + 1];
    files = files.filter((_, i) => i !== at && i !== at + 1);
    if (kind !== "conversations" && !(kind in OTHER_KINDS)) {
      console.error(`--kind must be one of conversations, ${Object.keys(OTHER_KINDS).join(", ")}`);
      process.exit(2);
    }
  }
  let text;
  try {
    text = readInput(files);
  } catch (e) {
    console.error(`cannot read input: ${e.message}`);
    process.exit(2);
  }
  let passed = 0;
  let failed = 0;
  for (const [index, line] of text.split("\n").entries()) {
    if (line.trim() === "") continue;
    const found = problemsOf(line);
    if (found.length === 0) {
      passed += 1;
      continue;
    }
    failed += 1;
    let id = "?";
    try {
      id = JSON.parse(line).id ?? "?";
    } catch {
      // The problem line already says it is not JSON.
    }
    const more = found.length > 5 ? ` (and ${found.length - 5} more)` : "";
    console.log(`body ${index + 1} (id ${id}): ${found.slice(0, 5).join("; ")}${more}`);
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 && passed > 0 ? 0 : 1);
}

main();
